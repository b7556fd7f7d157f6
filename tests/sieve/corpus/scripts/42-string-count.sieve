require ["variables", "relational", "fileinto", "comparator-i;ascii-numeric"];
set "a" "x"; set "b" "";
if string :count "eq" :comparator "i;ascii-numeric" ["${a}", "${b}", "y"] "2" { fileinto "two-nonempty"; }
if string :value "gt" :comparator "i;ascii-numeric" "${a}" "9" { fileinto "x-is-infinite"; }
