require ["fileinto", "x-not-an-extension"];
fileinto "x";
