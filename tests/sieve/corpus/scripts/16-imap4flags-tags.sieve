require ["imap4flags", "fileinto", "copy"];
fileinto :flags "\\Answered" :copy "Archive";
if hasflag :contains "" "x" { fileinto "never"; }
addflag "Work";
if hasflag :is "work" { keep :flags "\\Seen"; }
