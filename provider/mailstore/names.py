"""Folder names: checking them, and mapping them to Maildir++ directory names in modified UTF-7."""

from __future__ import annotations

import base64
import binascii

SEPARATOR = "/"
"""Hierarchy separator shown to IMAP clients ("Projects/2024")."""

DISK_SEPARATOR = "."
"""Maildir++ hierarchy separator on disk (".Projects.2024")."""

INBOX = "INBOX"

MAX_COMPONENT_BYTES = 255
"""Longest component of a folder name, in UTF-8 bytes."""

MAX_DISK_NAME_BYTES = 255
"""Longest directory name most file systems accept (NAME_MAX)."""

_FORBIDDEN = {"*": "'*' (an IMAP wildcard)", "%": "'%' (an IMAP wildcard)"}


def encode_mutf7(text: str) -> str:
    """Encode text as modified UTF-7, RFC 3501 §5.1.3 (how Dovecot names folders on disk)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            pending.clear()

    for char in text:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode modified UTF-7 (RFC 3501 §5.1.3); ValueError for anything not in canonical form."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if not 0x20 <= ord(char) <= 0x7E:
            raise ValueError(f"not modified UTF-7: {text!r}")
        if char != "&":
            out.append(char)
            index += 1
            continue
        end = text.find("-", index + 1)
        if end < 0:
            raise ValueError(f"unterminated '&' in {text!r}")
        chunk = text[index + 1 : end]
        index = end + 1
        if not chunk:
            out.append("&")
            continue
        b64 = chunk.replace(",", "/")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            decoded = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise ValueError(f"bad modified base64 in {text!r}") from error
        out.append(decoded)
    result = "".join(out)
    # Canonical form only (no encoded ASCII, no split runs), so one name has one spelling.
    if encode_mutf7(result) != text:
        raise ValueError(f"non-canonical modified UTF-7 in {text!r}")
    return result


def normalize_folder_name(name: str) -> str:
    """Check an API folder name and return its canonical spelling ("inbox" → "INBOX").

    Raises ValueError saying what is wrong: empty, leading/trailing or doubled separator, a "."
    (the on-disk separator, which also rules out ".."), control characters, IMAP wildcards, or a
    component or on-disk name longer than 255 bytes.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a folder name cannot be empty")
    if name.upper() == INBOX:
        return INBOX
    for char in name:
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            raise ValueError(f"folder name {name!r} contains a control character")
        if char in _FORBIDDEN:
            raise ValueError(f"folder name {name!r} contains {_FORBIDDEN[char]}")
        if char == DISK_SEPARATOR:
            raise ValueError(
                f"folder name {name!r} contains '.', which the Maildir++ layout uses between "
                f"levels; use {SEPARATOR!r} for sub-folders"
            )
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError(f"folder name {name!r} is not valid Unicode")
    if name.startswith(SEPARATOR) or name.endswith(SEPARATOR):
        raise ValueError(f"folder name {name!r} cannot start or end with {SEPARATOR!r}")
    parts = name.split(SEPARATOR)
    if any(not part for part in parts):
        raise ValueError(f"folder name {name!r} has an empty level")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"a level of folder name {name!r} is longer than 255 bytes")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    normalized = SEPARATOR.join(parts)
    if len(disk_name(normalized).encode("ascii")) > MAX_DISK_NAME_BYTES:
        raise ValueError(f"folder name {name!r} is too long to store")
    return normalized


def disk_name(name: str) -> str:
    """Directory name under the Maildir root for a normalized folder name ("" for INBOX)."""
    if name == INBOX:
        return ""
    return DISK_SEPARATOR + DISK_SEPARATOR.join(
        encode_mutf7(part) for part in name.split(SEPARATOR)
    )


def folder_name(directory: str) -> str | None:
    """Folder name for a Maildir++ directory name (".Sent" → "Sent"), None if it is not one."""
    if not directory.startswith(DISK_SEPARATOR) or directory in (".", ".."):
        return None
    try:
        parts = [decode_mutf7(part) for part in directory[1:].split(DISK_SEPARATOR)]
        name = SEPARATOR.join(parts)
        if SEPARATOR in "".join(parts) or normalize_folder_name(name) != name:
            return None
    except ValueError:
        return None
    return name


def parents(name: str) -> list[str]:
    """Superior names of a normalized folder name, outermost first ("a/b/c" → ["a", "a/b"])."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:depth]) for depth in range(1, len(parts))]
