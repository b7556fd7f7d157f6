require "fileinto";
if header :contains "subject" ["INVOICE", "release"] { fileinto "Matched"; stop; }
if header :comparator "i;octet" :contains "subject" "invoice" { fileinto "Octet"; }
