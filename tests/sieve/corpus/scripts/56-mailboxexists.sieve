require ["fileinto", "mailbox", "variables"];
set "box" "Work";
if mailboxexists "${box}" { fileinto "${box}"; }
elsif not mailboxexists ["INBOX", "${box}"] { fileinto :create "new-${box}"; }
