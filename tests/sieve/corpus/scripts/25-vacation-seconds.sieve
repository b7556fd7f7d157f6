require ["vacation", "vacation-seconds"];
vacation :seconds 90000 "text: multi
line";
