require "fileinto";
if header :contains "subject" "zzz" { fileinto "z"; }
elsif header :contains "from" "bob" { fileinto "bob"; }
elsif header :contains "from" "monitor" { fileinto "monitor"; }
else { fileinto "other"; }
