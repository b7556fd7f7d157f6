require ["variables", "copy"];
if address :localpart :matches "from" "*" { redirect :copy "${1}-copy@example.org"; }
redirect :copy "archive@example.org";
redirect :copy "archive@example.org";
