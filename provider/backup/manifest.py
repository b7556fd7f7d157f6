"""Snapshot manifests: every message's folder, UID, flags, dates, size, hash and key headers."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

FORMAT_VERSION = 1
# First line: magic, format and the SHA-256 of the (zlib) body after it, so a manifest proves
# its own integrity (RELIABILITY B1) in one file that appears by a single rename.
MAGIC = b"provider-backup-manifest"
_HEADER_LINE = re.compile(rb"provider-backup-manifest (\d+) sha256=([0-9a-f]{64})\n")
_HEADER_LIMIT = 64 * 1024  # key headers are looked for in the first 64 KiB only
_TEXT_LIMIT = 998


class DamagedManifest(Exception):
    """A manifest that is truncated, altered or not a manifest at all."""


@dataclass(frozen=True)
class ManifestMessage:
    folder: str
    uid: int
    basename: str
    flags: tuple[str, ...]
    keywords: tuple[str, ...]
    internal_date: float
    zone_minutes: int
    size: int
    sha256: str
    message_id: str = ""
    sender: str = ""
    subject: str = ""
    date: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ManifestFolder:
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int


@dataclass
class Manifest:
    snapshot_id: str
    address: str
    created_at: datetime
    folders: list[ManifestFolder] = field(default_factory=list)
    messages: list[ManifestMessage] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.messages)

    def digests(self) -> set[str]:
        return {m.sha256 for m in self.messages}

    def encode(self) -> tuple[bytes, str]:
        """The file's bytes and the SHA-256 of its body (also kept in the snapshots index)."""
        document = {
            "format": FORMAT_VERSION,
            "snapshot": self.snapshot_id,
            "address": self.address,
            "created_at": self.created_at.isoformat(),
            "folders": [asdict(f) for f in self.folders],
            "messages": [m.to_dict() for m in self.messages],
        }
        body = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)
        digest = hashlib.sha256(body).hexdigest()
        return b"%s %d sha256=%s\n" % (MAGIC, FORMAT_VERSION, digest.encode()) + body, digest

    @classmethod
    def decode(cls, data: bytes) -> tuple[Manifest, str]:
        """The manifest and its body's SHA-256; DamagedManifest when anything does not add up."""
        newline = data.find(b"\n")
        match = _HEADER_LINE.fullmatch(data[: newline + 1]) if newline > 0 else None
        if match is None:
            raise DamagedManifest("not a manifest (bad first line)")
        if int(match.group(1)) != FORMAT_VERSION:
            raise DamagedManifest(f"unknown manifest format {match.group(1).decode()}")
        body = data[newline + 1 :]
        digest = hashlib.sha256(body).hexdigest()
        if digest != match.group(2).decode():
            raise DamagedManifest("manifest does not match its SHA-256")
        try:
            document = json.loads(zlib.decompress(body))
            manifest = cls(
                snapshot_id=document["snapshot"],
                address=document["address"],
                created_at=datetime.fromisoformat(document["created_at"]).astimezone(UTC),
                folders=[ManifestFolder(**f) for f in document["folders"]],
                messages=[
                    ManifestMessage(
                        **{**m, "flags": tuple(m["flags"]), "keywords": tuple(m["keywords"])}
                    )
                    for m in document["messages"]
                ],
            )
        except (ValueError, KeyError, TypeError, zlib.error) as error:
            raise DamagedManifest(f"manifest cannot be read: {error}") from None
        return manifest, digest


def new_snapshot_id(moment: datetime) -> str:
    """UTC time to the second plus a random suffix: sorts by time, never collides."""
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def snapshot_time(snapshot_id: str) -> datetime:
    return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _text(value: object) -> str:
    if value is None:
        return ""
    value = str(value)
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        decoded = value
    return " ".join(decoded.split())[:_TEXT_LIMIT]


def key_headers(data: bytes) -> dict[str, str]:
    """Message-ID, From, Subject and Date, decoded (RFC 2047) for browsing and search."""
    head = data[:_HEADER_LIMIT]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            head = head[:end]
            break
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")
    return {
        "message_id": _text(parsed.get("Message-ID")),
        "sender": _text(parsed.get("From")),
        "subject": _text(parsed.get("Subject")),
        "date": _text(parsed.get("Date")),
    }
