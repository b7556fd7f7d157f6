"""Mail protocol listeners (LMTP, inbound SMTP; IMAP and POP3 later) on one asyncio runner."""
