require ["date", "fileinto", "relational", "comparator-i;ascii-numeric"];
if currentdate :value "ge" :comparator "i;ascii-numeric" "year" "2020" { fileinto "recent"; }
if currentdate :zone "+0000" :is "zone" "+0000" { fileinto "utc"; }
if currentdate :zone "-0330" :is "zone" "-0330" { fileinto "nst"; }
if currentdate :value "lt" :comparator "i;ascii-numeric" "julian" "50000" { fileinto "past"; }
if currentdate :count "eq" :comparator "i;ascii-numeric" "date" "1" { fileinto "one"; }
if currentdate :is "nonsense" "" { fileinto "nonsense"; }
if not currentdate :matches "iso8601" "????-??-??T??:??:??[+-]??:??" { fileinto "iso-shape"; }
