require "fileinto";
if exists ["List-Id"] { fileinto "lists"; }
if exists ["From", "X-Empty"] { fileinto "has-empty"; }
if size :over 10K { fileinto "big"; }
if size :under 300 { fileinto "tiny"; }
if not exists "Message-ID" { discard; }
