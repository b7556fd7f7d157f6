require ["regex", "fileinto", "variables"];
if header :regex "subject" "^\\[([a-z]+)\\] (.*)$" { fileinto "re-${1}"; }
if header :regex "subject" "[0-9]{5}" { fileinto "re-five-digits"; }
if header :regex :comparator "i;octet" "from" "^[[:alpha:]]+@" { fileinto "re-alpha"; }
