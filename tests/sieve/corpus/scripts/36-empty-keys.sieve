require "fileinto";
if header :contains "subject" "" { fileinto "contains-empty"; }
if header :is "X-Empty" "" { fileinto "empty-header"; }
if header :matches "X-Missing" "*" { fileinto "missing-star"; }
