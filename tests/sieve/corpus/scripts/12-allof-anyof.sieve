require "fileinto";
if allof (header :contains "from" "example", not header :contains "subject" "hello") { fileinto "A"; }
if anyof (false, header :is "X-Priority" "3", size :over 1M) { fileinto "B"; }
if anyof (true) { if allof (true, false) { fileinto "never"; } }
