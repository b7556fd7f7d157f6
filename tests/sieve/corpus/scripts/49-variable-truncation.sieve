require ["variables", "fileinto"];
set "v" "é123456789";
set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}";
set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}";
set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}"; set "v" "${v}${v}";
set :length "n" "${v}";
if header :matches "subject" "*" { set :length "s" "${1}"; }
fileinto "${n}-${s}";
