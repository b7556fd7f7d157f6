require ["regex", "fileinto", "variables"];
if header :regex "x-version" "^([0-9]+)\\.([0-9]+)$" { fileinto "v${1}-${2}"; }
if address :regex :localpart "from" "^(news|monitor|billing)$" { fileinto "robot-${1}"; }
if header :regex "subject" "[[:digit:]]+ [[:lower:]]+" { fileinto "num-word"; }
