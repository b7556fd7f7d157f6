require ["envelope", "fileinto", "subaddress", "variables"];
if envelope :all :is "from" "alice@example.com" { fileinto "env-alice"; }
if envelope :detail :matches "to" "*" { fileinto "env-detail-${1}"; }
if envelope :domain :is "to" "EXAMPLE.ORG" { fileinto "env-org"; }
if envelope :localpart :contains "from" "sender" { fileinto "env-sender"; }
