require ["fileinto", "relational", "comparator-i;ascii-numeric"];
# Numbers beyond 32 bits (Pigeonhole takes up to 2^64 - 1).
if size :under 5000000000 { fileinto "under-5G"; }
if size :over 18446744073709551615 { fileinto "over-max"; }
if size :under 16G { fileinto "under-16G"; }
