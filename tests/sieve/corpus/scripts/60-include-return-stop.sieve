require ["include", "fileinto", "variables"];
set "local" "main";
include :personal "early-return";
include :global "stopper";
fileinto "not-reached-${local}";
