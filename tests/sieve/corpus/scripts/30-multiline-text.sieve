require "fileinto";
if header :contains "subject" text:
World
.
{ fileinto "multiline"; }
