require ["vacation", "variables"];
if header :matches "subject" "*" { set "s" "${1}"; }
vacation :days 0 :from "me@example.org" :addresses ["me@example.org"] :handle "h1" "Re: ${s}";
keep;
