require ["fileinto", "variables"];
if header :matches "to" "*@*.*" { fileinto "${1}|${2}|${3}"; }
if header :matches "message-id" "<*-*@*>" { fileinto "id-${1}-${2}"; }
if header :matches "subject" "*" { set :length "n" "${0}"; fileinto "len-${n}"; }
