require ["reject"];
if header :contains "subject" "alert" { reject "No alerts, please."; }
