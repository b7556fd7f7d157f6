require ["date", "fileinto", "variables"];
if date :zone "+0000" :matches "date" "date" "*" { fileinto "d-${1}"; }
if date :zone "+0000" :matches "date" "time" "*" { fileinto "t-${1}"; }
if date :zone "+0000" :matches "date" "julian" "*" { fileinto "j-${1}"; }
if date :zone "+0000" :matches "date" "weekday" "*" { fileinto "w-${1}"; }
if date :zone "+0000" :is "date" "year" "2026" { fileinto "year"; }
if date :zone "+0000" :is "date" "month" "12" { fileinto "month"; }
if date :zone "+0000" :matches "date" ["day", "hour", "minute", "second"] "*" { fileinto "x-${1}"; }
if date :is "date" "bogus" "2026" { fileinto "bogus"; }
