"""dovecot-keywords: IMAP keyword names for the letters a-z in Maildir file names."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from provider.mailstore import diskio
from provider.mailstore.uidlist import fsync_directory

KEYWORDS_NAME = "dovecot-keywords"
LOCK_NAME = "dovecot-keywords.lock"
MAX_KEYWORDS = 26
MAX_KEYWORD_LENGTH = 255
FIRST_LETTER = "a"

# RFC 3501 §9: atom-specials, plus "\" (system flags) and "]" (resp-specials).
_NOT_IN_ATOM = set('(){ %*"\\]')


def check_keyword(name: str) -> None:
    """ValueError unless `name` is an IMAP keyword (an atom that is not a system flag)."""
    if not name:
        raise ValueError("a keyword cannot be empty")
    if len(name) > MAX_KEYWORD_LENGTH:
        raise ValueError(f"keyword {name[:40]!r}… is longer than {MAX_KEYWORD_LENGTH} characters")
    for char in name:
        if not 0x21 <= ord(char) <= 0x7E or char in _NOT_IN_ATOM:
            raise ValueError(f"keyword {name!r} contains {char!r}, which IMAP does not allow")


def letter(index: int) -> str:
    return chr(ord(FIRST_LETTER) + index)


def index_of(letter_char: str) -> int:
    return ord(letter_char) - ord(FIRST_LETTER)


def parse(text: str) -> dict[int, str]:
    """Index → keyword, as Dovecot reads it: lines "<index> <keyword>", bad lines skipped."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        index_text, sep, name = line.partition(" ")
        if sep and index_text.isdigit() and 0 <= int(index_text) < MAX_KEYWORDS and name:
            names[int(index_text)] = name
    return names


def format_keywords(names: dict[int, str]) -> str:
    return "".join(f"{index} {names[index]}\n" for index in sorted(names))


@dataclass
class KeywordFile:
    """One folder's keyword table, re-read when the file changes."""

    path: Path
    names: dict[int, str] = field(default_factory=dict)
    _signature: tuple[int, int, int, int] | None = None

    @property
    def signature(self) -> tuple[int, int, int, int] | None:
        return self._signature

    def refresh(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            changed = self._signature is not None or bool(self.names)
            self.names, self._signature = {}, None
            return changed
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return False
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            self.names, self._signature = {}, None
            return True
        self.names, self._signature = parse(text), signature
        return True

    def lookup(self, name: str) -> int | None:
        """Index of a keyword; matching is case-insensitive, as in Dovecot's table."""
        folded = name.casefold()
        for index, known in self.names.items():
            if known.casefold() == folded:
                return index
        return None

    def names_for(self, letters: str) -> frozenset[str]:
        return frozenset(
            self.names[index_of(char)] for char in letters if index_of(char) in self.names
        )

    def add(self, wanted: list[str]) -> list[str]:
        """Give the missing keywords free letters, in the order given, and write the file; the
        keywords that found no free letter (the folder already names 26) are returned. Call
        with the folder lock held (Dovecot relies on the uidlist lock for this file too), right
        after refresh()."""
        missing: list[str] = []
        for name in wanted:
            if self.lookup(name) is None and name.casefold() not in {m.casefold() for m in missing}:
                missing.append(name)
        if not missing:
            return []
        free = [index for index in range(MAX_KEYWORDS) if index not in self.names]
        if free:
            names = dict(self.names)
            for index, name in zip(free, missing, strict=False):
                names[index] = name
            self._write(names)
        return missing[len(free) :]

    def ordered_names(self) -> tuple[str, ...]:
        """The keyword names in letter order (a, b, …)."""
        return tuple(self.names[index] for index in sorted(self.names))

    def _write(self, names: dict[int, str]) -> None:
        lock = self.path.with_name(LOCK_NAME)
        # Like Dovecot: under the uidlist lock a leftover keywords lock can only be stale.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        old_mtime = self._signature[3] // 1_000_000_000 if self._signature else 0
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                diskio.write_all(fd, format_keywords(names).encode("utf-8"))
                # Dovecot notices changes by mtime in whole seconds: it must grow every time.
                if int(os.fstat(fd).st_mtime) <= old_mtime:
                    os.utime(fd, (old_mtime + 1, old_mtime + 1))
                os.fsync(fd)
                os.rename(lock, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                raise
        finally:
            os.close(fd)
        fsync_directory(self.path.parent)
        self.refresh()
