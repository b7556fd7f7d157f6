require ["body", "fileinto"];
if body :raw :contains "Caf=E9" { fileinto "raw-qp"; }
if body :raw :contains "unsubscribe" { fileinto "raw-unsub"; }
