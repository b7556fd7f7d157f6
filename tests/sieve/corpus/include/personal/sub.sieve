require ["include", "variables", "fileinto"];
global "who";
fileinto "sub-${who}";
set "who" "changed";
return;
fileinto "after-return";
