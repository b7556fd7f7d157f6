require ["imap4flags", "fileinto"];
keep :flags "Bar \\Seen";
fileinto :flags "X" "INBOX";
fileinto :flags "one" "Folder";
fileinto "Folder";
