require ["fileinto", "relational", "comparator-i;ascii-numeric"];
if header :value "gt" :comparator "i;ascii-numeric" "X-Spam-Score" "5" { fileinto "spam-gt5"; }
if header :is :comparator "i;ascii-numeric" "X-Priority" "03" { fileinto "prio3"; }
if header :value "lt" :comparator "i;ascii-numeric" "X-Letters" "100" { fileinto "letters-lt"; }
if header :value "ge" :comparator "i;ascii-numeric" "X-Letters" "100" { fileinto "letters-inf"; }
