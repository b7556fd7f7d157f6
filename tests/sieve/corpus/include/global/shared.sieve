require ["fileinto"];
fileinto "global-folder";
