require "fileinto";
if header :is ["SUBJECT", "x-priority"] ["3", "10 alerts"] { fileinto "case-insensitive-names"; }
if header :contains "x-spam-score" "2" { fileinto "second-instance"; }
if exists ["x-spam-score", "x-missing"] { fileinto "never"; }
