require ["fileinto", "variables"];
if header :matches "Subject" "*[*]*" { fileinto "tag-${2}"; }
elsif header :matches "subject" "* *" { fileinto "first-${1}-rest-${2}"; }
