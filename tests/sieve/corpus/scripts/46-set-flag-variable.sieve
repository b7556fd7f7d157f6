require ["imap4flags", "variables", "fileinto"];
setflag "f" "A B";
addflag "f" ["C", "a"];
removeflag "f" "B";
if hasflag :is "f" "c" { fileinto "has-c-${f}"; }
fileinto :flags "${f}" "Flagged";
