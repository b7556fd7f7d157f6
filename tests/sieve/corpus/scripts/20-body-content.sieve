require ["body", "fileinto"];
if body :content "text/html" :contains "<b>" { fileinto "html-bold"; }
if body :content "text/plain" :contains "Friday" { fileinto "plain-friday"; }
if body :content "application" :contains "PDF" { fileinto "pdf"; }
