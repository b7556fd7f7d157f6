require ["fileinto", "variables"];
if header :contains "subject" "München" { fileinto "muenchen"; }
if header :matches "from" "Jürgen*" { fileinto "juergen"; }
if address :is "to" "andre@example.org" { fileinto "andre"; }
if header :is "X-Folded" "first part  second part" { fileinto "folded"; }
