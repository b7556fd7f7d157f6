require ["fileinto", "variables"];
if address :domain :is "from" "example.com" { fileinto "dom-com"; }
if address :localpart :matches "from" "*" { fileinto "lp-${1}"; }
if address :all :contains ["to", "cc"] "example.org" { fileinto "to-org"; }
