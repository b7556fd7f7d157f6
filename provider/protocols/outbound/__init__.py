"""The outbound queue runner: delivering queued mail (runner), the SMTP client (client), DSNs."""
