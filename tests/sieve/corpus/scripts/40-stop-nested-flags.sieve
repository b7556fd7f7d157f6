require ["imap4flags"];
addflag "\\Seen";
if exists "subject" { if header :contains "subject" "alert" { discard; stop; } removeflag "\\seen"; addflag "Later"; }
