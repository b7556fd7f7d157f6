require ["date", "fileinto", "variables"];
if date :originalzone :matches "date" "iso8601" "*" { fileinto "o-${1}"; }
if date :zone "-0830" :matches "date" "iso8601" "*" { fileinto "z-${1}"; }
if date :zone "+1400" :matches "date" "std11" "*" { fileinto "s-${1}"; }
if date :matches "date" "std11" "*" { fileinto "l-${1}"; }
if date :originalzone :matches "date" "zone" "*" { fileinto "oz-${1}"; }
if date :zone "0100" :matches "date" "zone" "*" { fileinto "bad-${1}"; }
if date :matches "x-date" "date" "*" { fileinto "xdate"; }
if date :matches "received" "date" "*" { fileinto "rcv-${1}"; }
