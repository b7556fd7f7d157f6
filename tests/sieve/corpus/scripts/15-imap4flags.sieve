require ["imap4flags", "fileinto"];
if header :contains "subject" "hello" { addflag "\\Seen"; }
if exists "List-Id" { setflag ["\\Flagged", "$Label1"]; addflag "$Label2 $Label1"; fileinto "Lists"; }
if header :contains "subject" "alert" { addflag "\\Deleted junk"; removeflag "junk"; }
