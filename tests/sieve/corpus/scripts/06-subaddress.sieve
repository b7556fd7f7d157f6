require ["fileinto", "subaddress", "variables"];
if address :user :is "from" "bob" { fileinto "from-bob"; }
if address :detail :matches "from" "*" { fileinto "detail-${1}"; }
if address :detail :is "to" "" { fileinto "empty-detail"; }
if address :user :matches "to" "carol" { fileinto "carol"; }
if address :detail :matches "to" "work*" { fileinto "carol-${1}"; }
