require ["fileinto"];
if size :over 2K { stop; }
fileinto "small";
