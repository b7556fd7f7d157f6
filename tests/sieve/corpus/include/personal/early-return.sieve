require ["include", "variables", "fileinto", "imap4flags"];
if string :is "${local}" "" { fileinto "locals-are-local"; }
set "local" "inner";
if header :contains "subject" "Dates" { return; }
addflag "\\Flagged";
fileinto "early-${local}";
