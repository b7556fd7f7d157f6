"""The bundled IMAP4rev1 server (RFC 3501 plus IDLE, UIDPLUS, MOVE, QUOTA, SPECIAL-USE…)."""
