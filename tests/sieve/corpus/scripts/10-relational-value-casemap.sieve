require ["fileinto", "relational"];
if header :value "gt" "subject" "M" { fileinto "after-m"; }
if header :value "le" "from" "b" { fileinto "from-le-b"; }
if header :value "ne" "subject" "hello world" { fileinto "not-hello"; }
