require ["fileinto", "special-use", "mailbox", "imap4flags", "variables"];
if header :contains "subject" ["meeting", "Dates", "sale"] {
  fileinto :specialuse "\\Junk" :create :flags "\\Seen" "Spam";
}
if specialuse_exists "\\Junk" { fileinto "has-junk"; }
if specialuse_exists "INBOX" ["\\Junk", "\\Trash"] { fileinto "inbox-junk"; }
set "use" "\\Archive";
fileinto :specialuse "${use}" "Archive";
fileinto :specialuse "\\Trash" "Spam";
