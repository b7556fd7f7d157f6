require ["vacation", "fileinto"];
if anyof (exists "list-id", header :contains "auto-submitted" "auto", header :is "precedence" ["bulk", "list"]) {
  fileinto "automated";
} else {
  vacation "auto reply";
}
