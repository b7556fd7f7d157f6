"""Tests of the Maildir++ mail store: formats, UIDs, flags, folders, crash safety, concurrency."""

from __future__ import annotations

import os
import time
from pathlib import Path


def sample_message(tag: str, body_lines: int = 3) -> bytes:
    """A small RFC 5322 message with CRLF line endings whose body names `tag`."""
    body = "".join(f"line {n} of {tag}\r\n" for n in range(body_lines))
    return (
        f"From: sender@example.net\r\nTo: alice@example.com\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@example.net>\r\n\r\n{body}"
    ).encode()


def files_in(folder_path: Path, subdir: str) -> list[str]:
    return sorted(name for name in os.listdir(folder_path / subdir) if not name.startswith("."))


def uidlist_lines(folder_path: Path) -> list[str]:
    return (folder_path / "dovecot-uidlist").read_text().splitlines()


def age(path: Path, seconds: float) -> None:
    """Set a file's or directory's access and modification times `seconds` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))
