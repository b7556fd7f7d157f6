require ["vacation", "imap4flags"];
if header :contains "subject" "alert" { vacation :subject "Re: alerts" :mime "Content-Type: text/plain

busy"; }
elsif header :contains "subject" "invoice" { vacation :days 400 :handle "inv" "paid"; }
else { addflag "Seen-by-rule"; }
