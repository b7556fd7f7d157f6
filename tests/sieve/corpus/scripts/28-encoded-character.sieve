require ["encoded-character", "fileinto"];
if header :contains "subject" "${hex: 47 72 C3 BC}" { fileinto "${unicode:47}russ"; }
if header :contains "subject" "${hex:xy}" { fileinto "malformed"; }
if header :contains "from" "${UNICODE:0041}lice" { fileinto "alice"; }
