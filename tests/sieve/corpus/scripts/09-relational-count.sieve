require ["fileinto", "relational", "comparator-i;ascii-numeric"];
if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "3" { fileinto "many-rcpts"; }
if header :count "eq" :comparator "i;ascii-numeric" "X-Spam-Score" "2" { fileinto "two-scores"; }
if header :count "eq" "received" "0" { fileinto "no-received"; }
