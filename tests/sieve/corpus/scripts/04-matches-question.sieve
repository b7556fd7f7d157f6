require ["fileinto", "variables"];
if header :matches "subject" "??*" { fileinto "two-${1}${2}-${3}"; }
if header :matches "subject" "*\\*urgent\\**" { fileinto "escaped-star"; }
if header :matches "subject" "*\\?" { fileinto "ends-question"; }
