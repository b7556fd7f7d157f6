require "copy";
if header :contains "subject" "invoice" { redirect :copy "accounting@example.org"; }
if address :is "from" "alice@example.com" { redirect "alice-fwd@example.net"; }
