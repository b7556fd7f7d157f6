"""The selected folder as one session sees it: sequence numbers ↔ UIDs and pending updates."""

from __future__ import annotations

import bisect
import dataclasses
import functools
from dataclasses import dataclass, field

from provider.mailstore import Folder, FolderSnapshot, MessageInfo
from provider.mailstore.keywords import MAX_KEYWORDS
from provider.mailstore.maildir import Modseqs
from provider.protocols.imap.contexts import SearchContext, update_line
from provider.protocols.imap.parser import format_sequence_set

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flags_of(info: MessageInfo) -> frozenset[str]:
    return info.flags | info.keywords


@functools.lru_cache(maxsize=4096)
def _flag_names(flags: frozenset[str], keywords: frozenset[str]) -> bytes:
    """The sorted flag names as FETCH shows them; a folder has few distinct combinations, so
    a FETCH 1:* (FLAGS) sorts and encodes each once rather than once per message."""
    return " ".join(sorted(flags | keywords)).encode()


@dataclass
class SelectedView:
    """Sequence numbers stay stable until this session may send EXPUNGE (RFC 3501 §7.4.1):
    a message removed by someone else stays in `uids` (as "gone") until then.

    `infos` holds the MessageInfo this session last reported for each UID. The folder hands
    out the same MessageInfo object for a message until it changes, so an identity check finds
    what changed, and an unchanged folder version means there is nothing to look at at all.
    """

    folder: Folder
    readonly: bool
    uids: list[int] = field(default_factory=list)
    infos: dict[int, MessageInfo] = field(default_factory=dict)
    recent: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    highest: int = 0
    version: int | None = None
    uidvalidity: int = 0
    uidnext: int = 0
    # CONDSTORE (RFC 7162): once enabled, every FETCH with FLAGS carries MODSEQ; the modseqs
    # are those of the messages as this session last reported them.
    condstore: bool = False
    modseqs: dict[int, int] = field(default_factory=dict)
    highest_modseq: int = 0
    # QRESYNC (RFC 7162 §3.2): expunges are reported as `* VANISHED uids`, and every FETCH
    # this session did not ask for carries UID as well as MODSEQ (§3.2.4).
    qresync: bool = False
    # Set when the command's tagged OK must carry [HIGHESTMODSEQ]: a VANISHED went out
    # (RFC 7162 §3.2.7), or a MOVE moved something with CONDSTORE on (RFC 6851 §4.4).
    highest_due: bool = False
    # While expunges this session may not report yet wait in `gone`: the highest modseq from
    # before they were numbered, to be told instead of any higher one (§3.2, example in §6).
    delayed_highest: int | None = None
    # The folder's keywords as this session was last told them (FLAGS, PERMANENTFLAGS): no
    # FETCH shows a keyword before the FLAGS response that names it (RFC 3501 §7.2.6).
    keywords: tuple[str, ...] = ()
    # CONTEXT=SEARCH (contexts.py): live searches by tag, and a count that moves whenever a
    # message's flags, a new message or an expunge changes what a search could match.
    contexts: dict[str, SearchContext] = field(default_factory=dict)
    changes: int = 0

    def load(self, snapshot: FolderSnapshot, recent_from: int) -> None:
        """Start from a snapshot; messages from UID `recent_from` up are \\Recent here."""
        messages = snapshot.messages or []
        self.uids = [info.uid for info in messages]
        self.infos = {info.uid: info for info in messages}
        self.recent = {uid for uid in self.uids if uid >= recent_from}
        self.highest = self.uids[-1] if self.uids else 0
        self.version = snapshot.version
        self.uidvalidity = snapshot.uidvalidity
        self.uidnext = snapshot.uidnext
        if snapshot.modseqs is not None:
            self.set_modseqs(snapshot.modseqs)
        self.keywords = snapshot.keywords

    def flags_lines(self, keywords: tuple[str, ...]) -> list[bytes]:
        """`* FLAGS (...)` and `* OK [PERMANENTFLAGS (...)]` naming the system flags and these
        keywords, which the session then knows. PERMANENTFLAGS offers `\\*` (new keywords
        may be created) only while the folder has a free keyword letter, and is empty in a
        read-only session, where nothing can be changed (RFC 3501 §7.1, §6.3.2)."""
        self.keywords = keywords
        names = " ".join((*SYSTEM_FLAGS, *keywords))
        if self.readonly:
            permanent, text = "", "No permanent flags permitted"
        elif len(keywords) >= MAX_KEYWORDS:
            permanent = names
            text = f"Flags permitted; no new keywords (this folder has all {MAX_KEYWORDS})"
        else:
            permanent, text = names + " \\*", "Flags permitted"
        return [
            f"* FLAGS ({names})\r\n".encode(),
            f"* OK [PERMANENTFLAGS ({permanent})] {text}\r\n".encode(),
        ]

    def announce_keywords(self, keywords: tuple[str, ...]) -> list[bytes]:
        """The FLAGS and PERMANENTFLAGS responses if the folder's keywords changed since this
        session was last told them (another session, or this one, named a new keyword)."""
        if keywords == self.keywords:
            return []
        return self.flags_lines(keywords)

    def set_modseqs(self, modseqs: Modseqs) -> None:
        self.modseqs = modseqs.by_uid
        self.highest_modseq = modseqs.highest

    def note_modseqs(self, modseqs: Modseqs, uids: list[int]) -> None:
        """After our own STORE: the new modseqs of these messages (the others keep what this
        session reported, so that no change is ever paired with a modseq it has not shown)."""
        if uids:
            self.modseqs = dict(self.modseqs)
            for uid in uids:
                if uid in modseqs.by_uid:
                    self.modseqs[uid] = modseqs.by_uid[uid]

    def modseq_part(self, uid: int) -> bytes:
        return b"MODSEQ (%d)" % self.modseqs.get(uid, 0)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def numbers(self, uids: set[int], by_uid: bool) -> list[int]:
        """These messages as UIDs, or as their sequence numbers now."""
        return list(uids) if by_uid else [self.seq_of(uid) or 0 for uid in uids]

    def first_unseen(self) -> int | None:
        for seq, uid in enumerate(self.uids, 1):
            if "\\Seen" not in self.infos[uid].flags:
                return seq
        return None

    def display_flags(self, uid: int) -> list[str]:
        info = self.infos.get(uid)
        names = sorted(flags_of(info)) if info is not None else []
        if uid in self.recent:
            names.append("\\Recent")
        return names

    def flags_part(self, uid: int) -> bytes:
        """`FLAGS (...)` of a FETCH response: display_flags as octets."""
        info = self.infos.get(uid)
        names = _flag_names(info.flags, info.keywords) if info is not None else b""
        if uid in self.recent:
            names = names + b" \\Recent" if names else b"\\Recent"
        return b"FLAGS (" + names + b")"

    def fetch_flags_line(self, uid: int, with_uid: bool = False, flags: bool = True) -> bytes:
        """`* n FETCH (FLAGS (...))`, with UID when asked and MODSEQ once CONDSTORE is on;
        without FLAGS only for a .SILENT conditional STORE."""
        seq = self.seq_of(uid) or 0
        parts = [self.flags_part(uid)] if flags else []
        if with_uid or self.qresync:
            parts.append(b"UID %d" % uid)
        if self.condstore:
            parts.append(self.modseq_part(uid))
        return b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"

    def note_flags(self, info: MessageInfo) -> None:
        """Our own STORE: remember the new flags so the next refresh does not repeat them.
        A keyword this session has not been told of yet (set by someone else a moment ago) is
        left out: the next refresh names it in FLAGS first, then reports it in a FETCH."""
        if info.uid in self.infos:
            unknown = info.keywords.difference(self.keywords)
            if unknown:
                info = dataclasses.replace(info, keywords=info.keywords - unknown)
            self.infos[info.uid] = info
            self.changes += 1

    def remove(self, uids: set[int]) -> list[bytes]:
        """EXPUNGE responses for these UIDs, highest sequence number first (so each number is
        right at the moment it is sent), and drop them from the view. Once QRESYNC is enabled,
        one `* VANISHED uids` instead (RFC 7162 §3.2.10.2), naming only messages this session
        knows."""
        # Live searches first lose what goes, numbered as it still stands (as Dovecot does).
        out: list[bytes] = self._context_removals(uids)
        expunges: list[bytes] = []
        kept: list[int] = []
        removed: list[int] = []
        for index in range(len(self.uids) - 1, -1, -1):
            uid = self.uids[index]
            if uid in uids:
                expunges.append(b"* %d EXPUNGE\r\n" % (index + 1))
                removed.append(uid)
                self.infos.pop(uid, None)
                self.recent.discard(uid)
                self.gone.discard(uid)
            else:
                kept.append(uid)
        if expunges:
            kept.reverse()
            self.uids = kept
            self.changes += 1
            if self.qresync:
                self.highest_due = True
                expunges = [b"* VANISHED %s\r\n" % format_sequence_set(removed).encode()]
        if not self.gone:
            self.delayed_highest = None
        return out + expunges

    def _context_removals(self, uids: set[int]) -> list[bytes]:
        out = []
        for context in self.contexts.values():
            going = context.matched & uids
            if going:
                out.append(update_line(context, self.numbers(going, context.by_uid), []))
                context.matched -= going
        return out

    def refresh(
        self, snapshot: FolderSnapshot, allow_expunge: bool, recent_from: int = 0
    ) -> list[bytes]:
        """Untagged updates bringing the session up to date with the folder; new messages
        from UID `recent_from` up are \\Recent in this session."""
        # New keywords are named before any FETCH below can show them (RFC 3501 §7.2.6).
        out: list[bytes] = self.announce_keywords(snapshot.keywords)
        messages = snapshot.messages
        told = self.highest_modseq
        if snapshot.modseqs is not None:
            self.set_modseqs(snapshot.modseqs)
        if messages is not None:
            self.version = snapshot.version
            self.uidnext = snapshot.uidnext
            current = {info.uid: info for info in messages}
            waiting = bool(self.gone)
            self.gone.update([uid for uid in self.uids if uid not in current])
            if self.gone and not waiting and not allow_expunge:
                self.delayed_highest = told
            changed: list[int] = []
            new: list[MessageInfo] = []
            infos = self.infos
            for info in messages:
                old = infos.get(info.uid)
                if old is info:
                    continue
                if old is None:
                    if info.uid > self.highest:
                        new.append(info)
                    continue
                infos[info.uid] = info
                if flags_of(info) != flags_of(old):
                    changed.append(info.uid)
            if allow_expunge and self.gone:
                out += self.remove(set(self.gone))
            if new or changed:
                self.changes += 1
            if new:
                for info in new:
                    self.uids.append(info.uid)
                    infos[info.uid] = info
                    if info.uid >= recent_from:
                        self.recent.add(info.uid)
                self.highest = self.uids[-1]
                out.append(b"* %d EXISTS\r\n" % len(self.uids))
                out.append(b"* %d RECENT\r\n" % len(self.recent))
            out += [self.fetch_flags_line(uid) for uid in changed if uid in infos]
        elif allow_expunge and self.gone:
            out += self.remove(set(self.gone))
        return out
