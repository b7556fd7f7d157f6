require ["variables", "fileinto"];
set "a" "Hello";
set :upper "b" "${a}";
set :lowerfirst "c" "${b}";
set :length "d" "${a}${b}";
set :quotewildcard "e" "a*b?c\\";
set :upperfirst :lower "f" "wORLD";
if string :is "${e}" "a\\*b\\?c\\\\" { fileinto "${b}-${c}-${d}-${f}"; }
