"""Delivery status notifications (RFC 3464): a multipart/report for the sender's INBOX."""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

# A returned message larger than this comes back as its headers only (Postfix returns the
# headers beyond bounce_size_limit too): the DSN lands in the sender's own quota.
FULL_RETURN_LIMIT = 5 * 1024 * 1024
ENHANCED = re.compile(r"^([245])\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Failure:
    """One recipient to report: its reply and where it came from."""

    address: str
    reply: str  # "550 5.1.1 no such user (from mx.example.net)"
    orcpt: str | None = None
    remote_mta: str | None = None
    last_attempt: datetime | None = None


def status_of(reply: str) -> str:
    """The RFC 3463 status of an SMTP reply: its enhanced code, or X.0.0 from the class."""
    match = ENHANCED.match(reply)
    if match:
        return match.group(2)
    first = reply[:1]
    return f"{first}.0.0" if first in "245" and first else "4.0.0"


def _field(text: str, limit: int = 900) -> str:
    """A value safe inside one header-like line: no control characters, ASCII, bounded."""
    cleaned = CONTROL.sub(" ", text).encode("ascii", "replace").decode("ascii")
    return cleaned[:limit]


def _headers_of(original: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, _ = original.partition(separator)
        if found:
            return head + b"\r\n"
    return original.rstrip(b"\r\n") + b"\r\n"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def build(
    *,
    action: str,
    failures: Sequence[Failure],
    to_address: str,
    reporting_host: str,
    queue_id: str,
    original: bytes | None,
    arrival: datetime,
    moment: datetime,
    envid: str | None = None,
    ret: str | None = None,
    retry_until: datetime | None = None,
) -> bytes:
    """A DSN for `failures` of one message (action "failed" or "delayed"): a human part
    naming each recipient and the reply, the message/delivery-status part, and the returned
    message (RET=FULL or unset, failures only, up to FULL_RETURN_LIMIT) or its headers."""
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    failed = action == "failed"
    subject = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    human = [
        f"This is the mail system at {reporting_host}.",
        "",
    ]
    if failed:
        human += [
            "Your message could not be delivered to the recipient(s) below.",
            "It will not be retried. The reply of the receiving system is shown",
            "for each recipient.",
        ]
    else:
        until = email.utils.format_datetime(retry_until) if retry_until else "a few days"
        human += [
            "Your message has not been delivered yet to the recipient(s) below.",
            f"It is still being retried until {until}; you need not send it again.",
            "You will be told if it finally fails.",
        ]
    human.append("")
    for failure in failures:
        human.append(f"<{_field(failure.address, 320)}>: {_field(failure.reply)}")
    human += ["", f"Queue id: {queue_id}"]

    per_message = [f"Reporting-MTA: dns; {_field(reporting_host, 255)}"]
    if envid:
        per_message.append(f"Original-Envelope-Id: {_field(envid, 100)}")
    per_message.append(f"X-Provider-Queue-ID: {queue_id}")
    per_message.append(f"Arrival-Date: {email.utils.format_datetime(arrival)}")
    blocks = ["\r\n".join(per_message)]
    for failure in failures:
        lines = []
        if failure.orcpt:
            lines.append(f"Original-Recipient: {_field(failure.orcpt, 400)}")
        lines += [
            f"Final-Recipient: rfc822; {_field(failure.address, 320)}",
            f"Action: {action}",
            f"Status: {status_of(failure.reply)}",
        ]
        if failure.remote_mta:
            lines.append(f"Remote-MTA: dns; {_field(failure.remote_mta, 255)}")
        lines.append(f"Diagnostic-Code: smtp; {_field(failure.reply)}")
        when = failure.last_attempt or moment
        lines.append(f"Last-Attempt-Date: {email.utils.format_datetime(when)}")
        if not failed and retry_until is not None:
            lines.append(f"Will-Retry-Until: {email.utils.format_datetime(retry_until)}")
        blocks.append("\r\n".join(lines))
    status_part = "\r\n\r\n".join(blocks) + "\r\n"

    full = (
        failed
        and original is not None
        and (ret or "FULL").upper() != "HDRS"
        and len(original) <= FULL_RETURN_LIMIT
    )
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_field(reporting_host, 255)}>",
        f"To: <{_field(to_address, 320)}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(moment)}",
        f"Message-ID: {email.utils.make_msgid(domain=reporting_host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
    ]
    parts = ("\r\n".join(head) + "\r\n").encode("ascii") + status_part.encode("ascii")
    if original is None:
        returned = b""
    elif full:
        returned = (
            f"\r\n--{boundary}\r\n"
            "Content-Description: Undelivered message\r\n"
            "Content-Type: message/rfc822\r\n\r\n"
        ).encode("ascii") + _crlf(original)
    else:
        returned = (
            f"\r\n--{boundary}\r\n"
            "Content-Description: Message headers\r\n"
            "Content-Type: text/rfc822-headers\r\n\r\n"
        ).encode("ascii") + _crlf(_headers_of(original))
    if returned and not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    return parts + returned + f"\r\n--{boundary}--\r\n".encode("ascii")
