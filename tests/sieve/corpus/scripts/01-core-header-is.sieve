require "fileinto";
if header :is "subject" "Hello World" { fileinto "Hello"; }
elsif header :is ["X-Spam-Flag", "Precedence"] ["bulk", "YES"] { fileinto "Bulk"; }
else { keep; }
