require ["variables", "fileinto"];
if header :matches "from" "*@*" { set "dom" "${2}"; }
if string :matches "${dom}" "*.com*" { fileinto "dotcom"; }
if string :is "${dom}" "" { fileinto "no-dom"; }
if string :contains ["${dom}", "x"] "example" { fileinto "example-${dom}"; }
