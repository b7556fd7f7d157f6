require ["reject", "fileinto"];
if header :contains "subject" "invoice" { fileinto "Bills"; }
if exists "To" { reject "rejected"; }
