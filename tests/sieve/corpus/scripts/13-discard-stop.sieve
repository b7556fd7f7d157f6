if header :contains "subject" "alert" { discard; stop; }
if header :contains "from" "vacation" { discard; }
keep;
