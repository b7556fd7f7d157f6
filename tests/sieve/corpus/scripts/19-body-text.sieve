require ["body", "fileinto"];
if body :contains "invoice" { fileinto "body-invoice"; }
if body :text :contains "meeting" { fileinto "body-meeting"; }
if body :contains "Café" { fileinto "body-cafe"; }
