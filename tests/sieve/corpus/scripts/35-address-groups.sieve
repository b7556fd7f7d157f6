require ["fileinto", "relational", "comparator-i;ascii-numeric"];
if address :count "eq" :comparator "i;ascii-numeric" "cc" "0" { fileinto "no-cc-address"; }
if address :domain :is "sender" "example.org" { fileinto "sender-org"; }
if address :all :is "to" "me+@example.org" { fileinto "empty-plus"; }
