"""A mailbox's Sieve scripts, kept in its home as Dovecot's Pigeonhole keeps them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, InvalidInput, NotFound, ProviderError
from provider.mailstore import MailStore
from provider.mailstore.uidlist import fsync_directory
from provider.models import Mailbox
from provider.services import audit
from provider.services.audit import Actor
from provider.sieve import Script, SieveError, compile_script

# Pigeonhole's defaults (sieve = ~/.dovecot.sieve, sieve_dir = ~/sieve): scripts are
# ~/sieve/NAME.sieve and the active one is the symlink ~/.dovecot.sieve → sieve/NAME.sieve.
SCRIPT_DIR = "sieve"
SUFFIX = ".sieve"
ACTIVE_LINK = ".dovecot.sieve"
# Where the owner finds what went wrong with the active script (Pigeonhole writes the active
# script's compile errors to <script path>.log; we add run-time errors there too).
ERROR_LOG = ".dovecot.sieve.log"
ERROR_LOG_MAX_BYTES = 64 * 1024
# What Pigeonhole does with a regular file found where the link belongs.
ORIGINAL_NAME = "dovecot.orig"
NAME_MAX_CHARACTERS = 128  # RFC 5804 §1.6: servers MUST allow 128 characters
# A file name holds 255 bytes; NAME + ".sieve" must fit, with room for our temporary prefix.
NAME_MAX_BYTES = 200
# RFC 5804 §1.6 forbids C0, DEL, C1, U+2028 and U+2029; "/" would leave the directory.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029/]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Sorting needs IMAP (DESIGN.md §1); a POP3-only mailbox may still have vacation and forwards.
SORTING_EXTENSIONS = frozenset({"fileinto", "imap4flags", "mailbox"})
POP3_ONLY_REASON = (
    "sorting rules (fileinto, imap4flags) need IMAP; a POP3-only mailbox may only use "
    "redirect, vacation, discard and reject"
)


class ScriptInvalid(InvalidInput):
    """The script does not compile; the message carries Pigeonhole-style line and column."""


class ScriptActive(ProviderError):
    """Deleting the active script (RFC 5804 §2.10: ACTIVE); deactivate it first."""

    http_status = 409


class ScriptLimit(ProviderError):
    """A script larger than SIEVE_MAX_SCRIPT_BYTES, or one script too many (QUOTA/…)."""

    http_status = 507


class ScriptChanged(ProviderError):
    """The script is no longer what the caller read (changed meanwhile); nothing was written."""

    http_status = 409


class TemporaryFailureInStore(ProviderError):
    """The script store is not in a state we write to."""

    http_status = 503


@dataclass(frozen=True)
class ScriptInfo:
    """One stored script: its name, whether it is the active one, its size in bytes."""

    name: str
    active: bool
    size: int
    # What the compiler warned about at upload (an included script that does not exist yet).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "active": self.active, "size": self.size}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True)
class Limits:
    """Per-mailbox script limits (ManageSieve HAVESPACE answers from these too)."""

    max_script_bytes: int
    max_scripts: int


def limits() -> Limits:
    config = current_app.config
    return Limits(int(config["SIEVE_MAX_SCRIPT_BYTES"]), int(config["SIEVE_MAX_SCRIPTS"]))


def home_of(store: MailStore, address: str) -> Path:
    """The mailbox's home (Dovecot's mail_home): DATA_DIR/mail/<domain>/<local>/."""
    return store.path_for(address).parent


def check_name(name: str) -> str:
    """The script name as kept (NFC, as Net-Unicode asks); InvalidInput when it cannot be one."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a script name cannot be empty", "name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("a script name must be valid UTF-8", "name") from None
    name = unicodedata.normalize("NFC", name)
    if _FORBIDDEN.search(name):
        raise InvalidInput("a script name may not contain '/' or control characters", "name")
    if name.startswith("."):
        # Dotfiles are Dovecot's (and ours): temporary files, the active link.
        raise InvalidInput("a script name may not start with '.'", "name")
    if len(name) > NAME_MAX_CHARACTERS or len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise InvalidInput(
            f"a script name may have at most {NAME_MAX_CHARACTERS} characters "
            f"({NAME_MAX_BYTES} bytes in UTF-8)",
            "name",
        )
    return name


def _script_dir(home: Path) -> Path:
    return home / SCRIPT_DIR


def _script_path(home: Path, name: str) -> Path:
    return _script_dir(home) / f"{name}{SUFFIX}"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[Path]:
    """The sieve directory, created if missing, under an flock among our own processes."""
    directory = _script_dir(home)
    if not home.is_dir():
        raise NotFound("the mailbox has no mail store yet")
    if directory.is_symlink():
        raise TemporaryFailureInStore(f"{directory} is a symlink; not touching it")
    directory.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory
    except OSError as error:  # disk full, permissions: one clear line, the old state kept
        raise TemporaryFailureInStore(
            f"the Sieve scripts could not be written: {error.strerror or error}"
        ) from error
    finally:
        os.close(fd)


def active_name(home: Path) -> str | None:
    """The name of the active script: the link's target inside sieve/, else None."""
    link = home / ACTIVE_LINK
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    path = Path(target)
    if path.parent != Path(SCRIPT_DIR) or not path.name.endswith(SUFFIX):
        return None
    return path.name[: -len(SUFFIX)]


def list_scripts(store: MailStore, mailbox: Mailbox) -> list[ScriptInfo]:
    """Every script of the mailbox by name, the active one marked."""
    home = home_of(store, mailbox.address)
    active = active_name(home)
    found: list[ScriptInfo] = []
    try:
        entries = list(os.scandir(_script_dir(home)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(SUFFIX):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        name = entry.name[: -len(SUFFIX)]
        found.append(ScriptInfo(name, name == active, entry.stat(follow_symlinks=False).st_size))
    found.sort(key=lambda info: info.name)
    return found


def get_script(store: MailStore, mailbox: Mailbox, name: str) -> bytes:
    """The script's source as stored."""
    name = check_name(name)
    path = _script_path(home_of(store, mailbox.address), name)
    if path.is_symlink():
        raise NotFound(f"no script named {name!r}", "name")
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no script named {name!r}", "name") from None


Version = tuple[int, int, int, int]
# An included script is read whole; the interpreter refuses scripts over 1 MiB anyway.
INCLUDED_MAX_BYTES = 1024 * 1024


def global_dir() -> Path | None:
    """Where `include :global` finds the operator's scripts (Pigeonhole's sieve_global):
    SIEVE_GLOBAL_DIR, by default INSTANCE_DIR/sieve-global; None outside an app."""
    try:
        config = current_app.config
    except RuntimeError:
        return None
    configured = str(config.get("SIEVE_GLOBAL_DIR") or "")
    return Path(configured) if configured else Path(config["INSTANCE_DIR"]) / "sieve-global"


def _version(path: Path) -> Version | None:
    """(device, inode, size, mtime) of a regular file, not followed through a link; None else."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class ScriptLoader:
    """include's loader for one home: personal scripts from its sieve/ directory, global ones
    from global_dir(); remembers the version of every file it looked at (or that it was not
    there), so the compiled script can be known stale when any of them changes."""

    def __init__(self, home: Path | None, global_directory: Path | None) -> None:
        self.home = home
        self.global_directory = global_directory
        self.looked_at: list[tuple[Path, Version | None]] = []

    def __call__(self, location: str, name: str) -> bytes | None:
        if location == "personal":
            directory = _script_dir(self.home) if self.home is not None else None
        else:
            directory = self.global_directory
        try:
            name = check_name(name)
        except InvalidInput:
            return None
        if directory is None:
            return None
        path = directory / f"{name}{SUFFIX}"
        version = _version(path)  # no symlinks: a link could lead out of the home
        data = None
        if version is not None and version[2] <= INCLUDED_MAX_BYTES:
            try:
                data = path.read_bytes()
            except OSError:
                data = None
        self.looked_at.append((path, version if data is not None else None))
        return data


def check_script(
    mailbox: Mailbox,
    source: bytes,
    limit: Limits,
    *,
    home: Path | None = None,
    uploaded: bool = True,
) -> Script:
    """Compile `source` for this mailbox: size limit, grammar, and the POP3-only rule.
    Included personal scripts are read from `home`; an `uploaded` script (not being made
    active) may include one that does not exist yet, with a warning (Pigeonhole's rule)."""
    if len(source) > limit.max_script_bytes:
        raise ScriptLimit(
            f"the script has {len(source)} bytes; at most {limit.max_script_bytes} are allowed"
        )
    try:
        source.decode("utf-8")
    except UnicodeDecodeError as error:
        line = source[: error.start].count(b"\n") + 1
        raise ScriptInvalid(f"line {line}: error: the script is not valid UTF-8") from None
    try:
        script = compile_script(source, ScriptLoader(home, global_dir()), uploaded=uploaded)
    except SieveError as error:
        raise ScriptInvalid(str(error)) from None
    except RecursionError:
        raise ScriptInvalid("error: the script is nested too deeply") from None
    if not mailbox.imap_enabled and script.all_extensions & SORTING_EXTENSIONS:
        raise InvalidInput(POP3_ONLY_REASON)
    return script


def _write_atomically(directory: Path, final: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync of the directory: the old script or the new, never half."""
    temporary = directory / f".{final.name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def _link_active(home: Path, name: str | None) -> None:
    """Point ~/.dovecot.sieve at sieve/NAME.sieve (relative, as Pigeonhole makes it) in one
    rename; None removes it. A regular file there is kept as the script dovecot.orig."""
    link = home / ACTIVE_LINK
    if link.exists() and not link.is_symlink():
        os.rename(link, _script_path(home, ORIGINAL_NAME))
    if name is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
    else:
        temporary = home / f"{ACTIVE_LINK}.tmp-{secrets.token_hex(6)}"
        os.symlink(f"{SCRIPT_DIR}/{name}{SUFFIX}", temporary)
        try:
            os.rename(temporary, link)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    fsync_directory(home)


def put_script(
    session: Session,
    store: MailStore,
    mailbox: Mailbox,
    name: str,
    source: bytes,
    *,
    activate: bool = False,
    actor: Actor,
    limit: Limits | None = None,
    only_if: bytes | None = None,
) -> ScriptInfo:
    """Check, then store (replace) a script; with `activate`, make it the active one. With
    `only_if`, write only when the stored script is still exactly those bytes (checked under
    the lock), else ScriptChanged."""
    name = check_name(name)
    limit = limit or limits()
    home = home_of(store, mailbox.address)
    script = check_script(mailbox, source, limit, home=home, uploaded=not activate)
    with _locked(home) as directory:
        path = _script_path(home, name)
        existed = path.is_file()
        if only_if is not None and (not existed or path.read_bytes() != only_if):
            raise ScriptChanged(f"the script {name!r} was changed meanwhile; nothing written")
        if not existed:
            count = sum(1 for _ in list_scripts(store, mailbox))
            if count >= limit.max_scripts:
                raise ScriptLimit(
                    f"{mailbox.address} already has {count} scripts; at most "
                    f"{limit.max_scripts} are allowed"
                )
        _write_atomically(directory, path, source)
        if activate:
            _link_active(home, name)
    audit.record(
        session,
        actor,
        "sieve.put",
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        after={"name": name, "bytes": len(source), "replaced": existed, "active": activate},
    )
    return ScriptInfo(
        name, activate or active_name(home) == name, len(source), tuple(script.warnings)
    )


def activate_script(
    session: Session, store: MailStore, mailbox: Mailbox, name: str, *, actor: Actor
) -> str | None:
    """Make NAME the active script; an empty name deactivates (RFC 5804 §2.8 SETACTIVE "").
    Returns the name active before."""
    home = home_of(store, mailbox.address)
    wanted = check_name(name) if name else None
    with _locked(home):
        before = active_name(home)
        if wanted is not None:
            if not _script_path(home, wanted).is_file():
                raise NotFound(f"no script named {wanted!r}", "name")
            # The link must work for the script as it is now (a policy change since it was
            # put would otherwise activate rules the mailbox may not have).
            check_script(
                mailbox,
                _script_path(home, wanted).read_bytes(),
                _no_size_limit(),
                home=home,
                uploaded=False,
            )
        _link_active(home, wanted)
    audit.record(
        session,
        actor,
        "sieve.activate" if wanted else "sieve.deactivate",
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        before={"active": before},
        after={"active": wanted},
    )
    return before


def _no_size_limit() -> Limits:
    return Limits(2**62, 2**31)


def delete_script(
    session: Session, store: MailStore, mailbox: Mailbox, name: str, *, actor: Actor
) -> None:
    """Delete a script; the active one is refused (deactivate it first), as ManageSieve does."""
    name = check_name(name)
    home = home_of(store, mailbox.address)
    with _locked(home) as directory:
        path = _script_path(home, name)
        if path.is_symlink() or not path.is_file():
            raise NotFound(f"no script named {name!r}", "name")
        if active_name(home) == name:
            raise ScriptActive(
                f"{name!r} is the active script; deactivate it first "
                "(provider sieve activate ADDRESS '')"
            )
        size = path.stat().st_size
        os.unlink(path)
        fsync_directory(directory)
    audit.record(
        session,
        actor,
        "sieve.delete",
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        before={"name": name, "bytes": size},
    )


def rename_script(
    session: Session, store: MailStore, mailbox: Mailbox, old: str, new: str, *, actor: Actor
) -> None:
    """Rename a script (RFC 5804 §2.11 RENAMESCRIPT); the active one stays active.

    The new name is hard-linked first, the active link moved, then the old name removed: a
    crash in between leaves both names (never a dangling active link)."""
    old, new = check_name(old), check_name(new)
    home = home_of(store, mailbox.address)
    with _locked(home) as directory:
        source, target = _script_path(home, old), _script_path(home, new)
        if source.is_symlink() or not source.is_file():
            raise NotFound(f"no script named {old!r}", "name")
        if old == new:
            return
        if target.exists() or target.is_symlink():
            raise AlreadyExists(f"a script named {new!r} exists already", "name")
        os.link(source, target)
        fsync_directory(directory)
        was_active = active_name(home) == old
        if was_active:
            _link_active(home, new)
        os.unlink(source)
        fsync_directory(directory)
    audit.record(
        session,
        actor,
        "sieve.rename",
        mailbox.address,
        domain=mailbox.address.rpartition("@")[2],
        before={"name": old},
        after={"name": new, "active": was_active},
    )


# --- at delivery ----------------------------------------------------------------------------


@dataclass
class _Compiled:
    key: tuple[int, int, int, int]
    script: Script | None
    error: str | None
    # The included scripts' files as they were when this was compiled.
    included: list[tuple[Path, Version | None]]

    def current(self, key: tuple[int, int, int, int]) -> bool:
        return self.key == key and all(_version(path) == seen for path, seen in self.included)


_cache: dict[str, _Compiled] = {}
_cache_lock = threading.Lock()
CACHE_MAX_ENTRIES = 2048


class ActiveScriptError(Exception):
    """The active script cannot be used (it does not compile, or cannot be read)."""


def active_script(home: Path) -> Script | None:
    """The compiled active script of a home, None when there is none. Compiled once per file
    version (device, inode, size, mtime); ActiveScriptError when it does not compile."""
    link = home / ACTIVE_LINK
    try:
        status = os.stat(link)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise ActiveScriptError(f"cannot read the active script: {error.strerror}") from None
    real = os.path.realpath(link)
    if not Path(real).is_relative_to(os.path.realpath(home)):
        raise ActiveScriptError("the active script link leads outside the mailbox's home")
    key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(real)
    if cached is None or not cached.current(key):
        cached = _compile_file(Path(real), key, ScriptLoader(home, global_dir()))
        with _cache_lock:
            if len(_cache) >= CACHE_MAX_ENTRIES:
                _cache.clear()
            _cache[real] = cached
    if cached.error is not None:
        raise ActiveScriptError(cached.error)
    return cached.script


def _compile_file(path: Path, key: tuple[int, int, int, int], loader: ScriptLoader) -> _Compiled:
    try:
        source = path.read_bytes()
    except OSError as error:
        return _Compiled(key, None, f"cannot read the active script: {error.strerror}", [])
    try:
        return _Compiled(key, compile_script(source, loader), None, loader.looked_at)
    except SieveError as error:
        error_text = f"the active script does not compile: {error}"
    except RecursionError:
        error_text = "the active script does not compile: nested too deeply"
    return _Compiled(key, None, error_text, loader.looked_at)


def record_error(home: Path, text: str, when: datetime | None = None) -> None:
    """Append one line to ~/.dovecot.sieve.log (kept under 64 KiB: the older half goes)."""
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    clean = _CONTROL.sub(" ", text)[:1000]
    line = f"{stamp} {clean}\n".encode("utf-8", "replace")
    path = home / ERROR_LOG
    if path.is_symlink():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        if os.fstat(fd).st_size > ERROR_LOG_MAX_BYTES:
            kept = path.read_bytes()[-ERROR_LOG_MAX_BYTES // 2 :]
            kept = kept[kept.find(b"\n") + 1 :]
            _write_atomically(home, path, kept)
    finally:
        os.close(fd)


def recent_errors(store: MailStore, mailbox: Mailbox, count: int = 20) -> list[str]:
    """The last `count` lines of the mailbox's Sieve error log, oldest first."""
    path = home_of(store, mailbox.address) / ERROR_LOG
    if path.is_symlink():
        return []
    try:
        text = path.read_bytes()[-ERROR_LOG_MAX_BYTES:].decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-count:]
