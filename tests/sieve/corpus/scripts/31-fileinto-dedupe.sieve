require ["fileinto", "mailbox"];
fileinto "A"; fileinto "A"; fileinto :create "B"; keep; fileinto "INBOX";
