"""What a mailbox's active Sieve script decides for one delivery, as a plan delivery carries out."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provider.mailstore import INBOX, SYSTEM_FLAG_LETTERS
from provider.mailstore.keywords import check_keyword
from provider.mailstore.maildir import Maildir
from provider.services import sieve_scripts
from provider.sieve import Action, Context, Envelope, Result, run

log = logging.getLogger(__name__)

_SYSTEM_FLAGS = {flag.casefold(): flag for flag in SYSTEM_FLAG_LETTERS}
_REPLY_TEXT = re.compile(r"[^\x20-\x7e]+")
REJECT_TEXT_MAX = 200


@dataclass(frozen=True)
class PlannedStore:
    """One copy to store: the folder (created first when `create`), its flags and keywords."""

    folder: str
    flags: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class PlannedRedirect:
    """A copy to forward through the outbound queue; `copy` (RFC 3894): a kept copy stays."""

    address: str
    copy: bool = False


@dataclass
class Plan:
    """The script's verdict: copies to store (none = discarded), or a rejection, and notes for
    the owner's error log (what could not be done as the script said)."""

    stores: list[PlannedStore] = field(default_factory=list)
    reject: str | None = None
    notes: list[str] = field(default_factory=list)
    redirects: list[PlannedRedirect] = field(default_factory=list)
    vacation: Action | None = None

    @property
    def discarded(self) -> bool:
        return not self.stores and self.reject is None and not self.redirects


KEEP = PlannedStore(INBOX)


def mailbox_context(
    maildir: Maildir, seen: Callable[[str, str, int, bool], bool] | None = None
) -> Context:
    """What a script may ask of the recipient's store: mailboxexists (RFC 5490),
    specialuse_exists (RFC 8579), and `seen` for duplicate (RFC 7352; without it nothing is a
    duplicate)."""

    def mailbox_exists(name: str) -> bool:
        try:
            maildir.folder(name)
        except Exception:  # no such folder, or a name the store refuses
            return False
        return True

    def special_use_exists(name: str | None, flag: str) -> bool:
        try:
            folders = maildir.folders()
        except Exception:
            return False
        wanted = flag.lower()
        return any(
            (info.special_use or "").lower() == wanted and (name is None or info.name == name)
            for info in folders
        )

    return Context(mailbox_exists=mailbox_exists, special_use_exists=special_use_exists, seen=seen)


def plan_for(
    home: Path,
    message: bytes,
    sender: str,
    recipient: str,
    *,
    imap_allowed: bool,
    context: Context | None = None,
) -> Plan | None:
    """Run the active script of `home` on the message; None when there is no active script.
    Never raises for anything the script does: a failure is a plan of keep with a note."""
    try:
        script = sieve_scripts.active_script(home)
    except sieve_scripts.ActiveScriptError as error:
        return Plan([KEEP], notes=[f"{error}; the message was kept in INBOX"])
    if script is None:
        return None
    try:
        result = run(script, message, Envelope(sender, recipient), context=context)
    except Exception as error:  # a bug of ours must not lose the message either
        log.exception("the Sieve script of %s failed", recipient)
        return Plan([KEEP], notes=[f"run-time error: {error!r}; the message was kept in INBOX"])
    if result.error is not None:
        note = f"run-time error: {result.error}; the message was kept in INBOX"
        return Plan([KEEP], notes=[note])
    return _plan_of(result, imap_allowed)


def _plan_of(result: Result, imap_allowed: bool) -> Plan:
    plan = Plan()
    for action in result.actions:
        if action.kind in ("keep", "fileinto"):
            folder = action.target or INBOX
            if not imap_allowed and folder.upper() != INBOX:
                plan.notes.append(f"fileinto {folder!r} needs IMAP; kept in INBOX instead")
                folder = INBOX
            _add(plan, _store(folder, action.flags, action.create, plan))
        elif action.kind in ("reject", "ereject"):
            plan.reject = reply_text(action.text) or "Message rejected by the recipient's filter"
        elif action.kind == "redirect":
            plan.redirects.append(PlannedRedirect(action.target, action.copy))
        elif action.kind == "vacation":
            plan.vacation = action
    if result.implicit_keep:
        _add(plan, _store(INBOX, result.implicit_keep_flags, False, plan))
    if plan.reject is not None:
        plan.stores = []
    return plan


def add_keep(plan: Plan) -> None:
    """Keep a copy in INBOX (a redirect that could not be done), unless one is planned."""
    _add(plan, KEEP)


def _add(plan: Plan, store: PlannedStore) -> None:
    """One copy per folder: the first store into a folder wins (the interpreter already merged
    repeated stores into one folder as Pigeonhole does)."""
    if not any(_same_folder(existing.folder, store.folder) for existing in plan.stores):
        plan.stores.append(store)


def _same_folder(one: str, other: str) -> bool:
    if one.upper() == INBOX or other.upper() == INBOX:
        return one.upper() == other.upper()
    return one == other


def _store(folder: str, flags: tuple[str, ...], create: bool, plan: Plan) -> PlannedStore:
    """Split Sieve flags into IMAP system flags and keywords; drop what IMAP cannot store."""
    system: list[str] = []
    keywords: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            known = _SYSTEM_FLAGS.get(flag.casefold())
            if known is None:
                plan.notes.append(f"flag {flag!r} cannot be set on delivery; left out")
            elif known not in system:
                system.append(known)
            continue
        try:
            check_keyword(flag)
        except ValueError as error:
            plan.notes.append(f"{error}; left out")
            continue
        if flag.casefold() not in {k.casefold() for k in keywords}:
            keywords.append(flag)
    return PlannedStore(folder, tuple(system), tuple(keywords), create)


def reply_text(text: str) -> str:
    """A reject reason fit for one SMTP reply line: printable ASCII, at most 200 characters."""
    return _REPLY_TEXT.sub(" ", text).strip()[:REJECT_TEXT_MAX].strip()
