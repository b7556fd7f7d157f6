require ["fileinto", "variables"];
if header :matches "subject" "*" { fileinto "all-${0}-${1}-[${2}]-[${10}]"; }
if header :contains "from" "example" { fileinto "after-contains-[${1}]"; }
