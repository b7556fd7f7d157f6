require "vacation";
if not header :contains "subject" "alert" {
  vacation :days 3 :subject "Out of office" "I am away until Monday.";
}
