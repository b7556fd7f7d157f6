require ["date", "fileinto", "relational", "comparator-i;ascii-numeric"];
if date :value "gt" :zone "+0000" "date" "date" "2026-12-01" { fileinto "after"; }
elsif date :value "le" :zone "+0000" "date" "date" "2026-12-01" { fileinto "before"; }
if date :count "ge" :comparator "i;ascii-numeric" "date" "date" "2" { fileinto "two-dates"; }
if date :value "ge" :comparator "i;ascii-numeric" :zone "+0000" "date" "hour" "10" { fileinto "late"; }
if date :zone "+0000" :contains "date" "std11" "Dec" { fileinto "december"; }
if anyof (date :zone "+0000" :is "date" "weekday" ["0", "6"], not exists "date") { fileinto "weekend-or-none"; }
