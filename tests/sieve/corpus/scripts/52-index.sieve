require ["date", "index", "fileinto", "variables"];
if header :index 2 :matches "received" "from * by *;*" { fileinto "r2-${1}"; }
if header :index 1 :last :matches "received" "from * by*" { fileinto "rl-${1}"; }
if header :index 9 :contains "received" "" { fileinto "r9"; }
if address :index 1 :last :all "to" "other@example.org" { fileinto "lastto"; }
if address :index 1 :matches :domain "to" "*" { fileinto "firstto-${1}"; }
if date :index 2 :originalzone :matches "date" "zone" "*" { fileinto "d2-${1}"; }
if date :index 1 :last :zone "+0000" :matches "received" "time" "*" { fileinto "rt-${1}"; }
if header :index 1 :matches ["subject", "from"] "*" { fileinto "hs-${1}"; }
