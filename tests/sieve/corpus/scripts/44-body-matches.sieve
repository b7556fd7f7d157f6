require ["body", "fileinto"];
if body :matches "*total is ?? EUR*" { fileinto "total"; }
if body :content "" :contains "fake invoice" { fileinto "any-part"; }
if body :content "multipart" :contains "invoice" { fileinto "multipart-container"; }
