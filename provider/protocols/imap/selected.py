"""The selected folder as one session sees it: sequence numbers ↔ UIDs and pending updates."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from provider.mailstore import Folder, MessageInfo


def flags_of(info: MessageInfo) -> frozenset[str]:
    return info.flags | info.keywords


@dataclass
class SelectedView:
    """Sequence numbers stay stable until this session may send EXPUNGE (RFC 3501 §7.4.1):
    a message removed by someone else stays in `uids` (as "gone") until then."""

    folder: Folder
    readonly: bool
    uids: list[int] = field(default_factory=list)
    infos: dict[int, MessageInfo] = field(default_factory=dict)
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    recent: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    highest: int = 0

    def load(self, messages: list[MessageInfo]) -> None:
        for info in messages:
            self._add(info)

    def _add(self, info: MessageInfo) -> None:
        self.uids.append(info.uid)
        self.infos[info.uid] = info
        self.flags[info.uid] = flags_of(info)
        if info.recent:
            self.recent.add(info.uid)
        self.highest = max(self.highest, info.uid)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def display_flags(self, uid: int) -> list[str]:
        names = sorted(self.flags.get(uid, frozenset()))
        if uid in self.recent:
            names.append("\\Recent")
        return names

    def fetch_flags_line(self, uid: int, with_uid: bool = False) -> bytes:
        seq = self.seq_of(uid) or 0
        flags = " ".join(self.display_flags(uid))
        extra = f" UID {uid}" if with_uid else ""
        return f"* {seq} FETCH (FLAGS ({flags}){extra})\r\n".encode()

    def note_flags(self, info: MessageInfo) -> None:
        """Our own STORE: remember the new flags so the next refresh does not repeat them."""
        if info.uid in self.infos:
            self.infos[info.uid] = info
            self.flags[info.uid] = flags_of(info)

    def remove(self, uids: set[int]) -> list[bytes]:
        """EXPUNGE responses for these UIDs, highest sequence number first (so each number is
        right at the moment it is sent), and drop them from the view."""
        out: list[bytes] = []
        for index in range(len(self.uids) - 1, -1, -1):
            uid = self.uids[index]
            if uid in uids:
                out.append(b"* %d EXPUNGE\r\n" % (index + 1))
                del self.uids[index]
                self.infos.pop(uid, None)
                self.flags.pop(uid, None)
                self.recent.discard(uid)
                self.gone.discard(uid)
        return out

    def refresh(self, messages: list[MessageInfo], allow_expunge: bool) -> list[bytes]:
        """Untagged updates bringing the session up to date with the folder."""
        current = {info.uid: info for info in messages}
        out: list[bytes] = []
        self.gone |= {uid for uid in self.uids if uid not in current}
        if allow_expunge and self.gone:
            out += self.remove(set(self.gone))
        new = [info for info in messages if info.uid > self.highest]
        for info in new:
            self._add(info)
        if new:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        new_uids = {info.uid for info in new}
        for uid in self.uids:
            info = current.get(uid)
            if info is None or uid in new_uids:
                continue
            if flags_of(info) != self.flags[uid]:
                self.infos[uid] = info
                self.flags[uid] = flags_of(info)
                out.append(self.fetch_flags_line(uid))
            else:
                self.infos[uid] = info
        return out
