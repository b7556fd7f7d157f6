"""Tests with external mail clients (mbsync, offlineimap) against a real IMAP server."""
