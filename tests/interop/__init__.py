"""Interoperability tests: other programs (Dovecot) working on what this project writes."""
