require ["include", "variables", "fileinto"];
global "who";
set "who" "me";
include "sub";
include :once "sub";
include :once :personal "sub";
include :global "shared";
include :optional "missing";
fileinto "main-${who}";
if string :is "${global.who}" "changed" { fileinto "via-namespace"; }
