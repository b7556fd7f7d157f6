"""ManageSieve server (RFC 5804): a mailbox's Sieve scripts over STARTTLS and SASL PLAIN."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flask import Flask

from provider.errors import (
    AccessRefused,
    AlreadyExists,
    AuthenticationFailed,
    NotFound,
    ProviderError,
)
from provider.extensions import db
from provider.models import Mailbox
from provider.protocols import streams
from provider.protocols.pop3 import parse_sasl_plain
from provider.services import mail_access, sieve_scripts
from provider.services.audit import Actor
from provider.services.storage import mail_store
from provider.sieve import EXTENSIONS

log = logging.getLogger(__name__)

MAX_LINE = 16384
# A literal (a script, a SASL response) is at most SIEVE_MAX_SCRIPT_BYTES; a bigger one is
# skipped in chunks and refused, and one this many times bigger ends the connection unread.
SKIP_FACTOR = 16
SKIP_CHUNK = 64 * 1024
MAX_LITERALS = 4  # per command: PUTSCRIPT has one, nothing has more than two
MAX_NUMBER = 2**32 - 1  # RFC 5804 §4: number = 0..4294967295
BAD_BEFORE_LOGIN = 5
BAD_AFTER_LOGIN = 20
WRITE_HIGH_WATER = 256 * 1024
IMPLEMENTATION = "provider"
# check_policy checks status and trial expiry for this name but no protocol: every mailbox
# that may log in may manage its scripts (sieve_scripts enforces the POP3-only rule).
POLICY_PROTOCOL = mail_access.MANAGESIEVE
# Always available, never listed (RFC 5228 §2.7.3); Pigeonhole lists neither.
IMPLICIT_EXTENSIONS = frozenset({"comparator-i;octet", "comparator-i;ascii-casemap"})
SIEVE_CAPABILITY = " ".join(name for name in EXTENSIONS if name not in IMPLICIT_EXTENSIONS)

ANY_STATE = frozenset({"CAPABILITY", "LOGOUT", "NOOP"})
NOT_AUTHENTICATED = frozenset({"AUTHENTICATE", "STARTTLS"})
AUTHENTICATED = frozenset(
    {
        "PUTSCRIPT",
        "CHECKSCRIPT",
        "LISTSCRIPTS",
        "SETACTIVE",
        "GETSCRIPT",
        "DELETESCRIPT",
        "RENAMESCRIPT",
        "HAVESPACE",
        "UNAUTHENTICATE",
    }
)

_LITERAL_AT_END = re.compile(rb"\{([0-9]+)(\+?)\}$")
_ATOM = re.compile(rb"[A-Za-z]+")


class Disconnect(Exception):
    """End the session (LOGOUT, BYE, a timeout, too many errors, the client going away)."""


class SyntaxProblem(ValueError):
    """A command that does not follow RFC 5804 §4's grammar."""


# --- pure helpers ------------------------------------------------------------------------------


def literal_announced(line: bytes) -> tuple[int, bool] | None:
    """The literal a command line ends with (RFC 5804 §4 ``{n+}`` non-synchronizing, or ``{n}``,
    which we take without a continuation as Pigeonhole does): (size, non_sync), else None.
    A size of more than 20 digits counts as 2**64 (never parsed)."""
    found = _LITERAL_AT_END.search(line)
    if found is None:
        return None
    digits = found.group(1)
    size = int(digits) if len(digits) <= 20 else 2**64
    return size, bool(found.group(2))


def parse_arguments(data: bytes, position: int = 0) -> list[bytes | int]:
    """RFC 5804 §4 arguments from `position`: ``*(SP (string / number))``, strings quoted (with
    ``\\"`` and ``\\\\`` escapes, no CR, LF or NUL) or literals ``{n+}CRLF`` + n octets; numbers
    0..4294967295. Strings come back as bytes, numbers as int. SyntaxProblem on anything else."""
    arguments: list[bytes | int] = []
    end = len(data)
    while position < end:
        if data[position : position + 1] != b" ":
            raise SyntaxProblem("Expected a space between arguments")
        while position < end and data[position] == 0x20:
            position += 1
        if position >= end:
            break
        first = data[position]
        if first == 0x22:  # quoted
            out = bytearray()
            position += 1
            while True:
                if position >= end:
                    raise SyntaxProblem("Unterminated quoted string")
                octet = data[position]
                if octet == 0x22:
                    position += 1
                    break
                if octet == 0x5C:
                    escaped = data[position + 1 : position + 2]
                    if escaped not in (b'"', b"\\"):
                        raise SyntaxProblem("Invalid escape in quoted string")
                    out += escaped
                    position += 2
                    continue
                if octet in (0x00, 0x0A, 0x0D):
                    raise SyntaxProblem("Quoted strings may not hold CR, LF or NUL")
                out.append(octet)
                position += 1
            arguments.append(bytes(out))
        elif first == 0x7B:  # literal
            found = re.compile(rb"\{([0-9]{1,10})\+?\}\r?\n").match(data, position)
            if found is None:
                raise SyntaxProblem("Invalid literal")
            size = int(found.group(1))
            start = found.end()
            if start + size > end:
                raise SyntaxProblem("Literal shorter than announced")
            arguments.append(data[start : start + size])
            position = start + size
        elif 0x30 <= first <= 0x39:
            found = re.compile(rb"[0-9]+").match(data, position)
            assert found is not None
            digits = found.group()
            if len(digits) > 10 or int(digits) > MAX_NUMBER:
                raise SyntaxProblem("Number too big")
            arguments.append(int(digits))
            position = found.end()
        else:
            raise SyntaxProblem("Arguments must be strings or numbers")
    return arguments


def parse_command(data: bytes) -> tuple[str, list[bytes | int]]:
    """A whole command (line ends and literals included, the final CRLF stripped): its upper-case
    name and arguments. SyntaxProblem when it is malformed."""
    found = _ATOM.match(data)
    if found is None:
        raise SyntaxProblem("Expected a command name")
    return found.group().decode().upper(), parse_arguments(data, found.end())


def string_form(value: str | bytes) -> bytes:
    """A response string (RFC 5804 §4): quoted when it is short and plain, else a literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) <= 1024 and not any(octet in raw for octet in b"\r\n\x00"):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def response(kind: str, text: str = "", code: str | None = None) -> bytes:
    """``OK``/``NO``/``BYE`` [SP "(" code ")"] [SP string] CRLF."""
    out = kind.encode()
    if code:
        out += b" (" + code.encode() + b")"
    if text:
        out += b" " + string_form(text)
    return out + b"\r\n"


@dataclass(frozen=True)
class Account:
    address: str
    mailbox_id: int


class Refused(Exception):
    """A command's NO answer, with its response code."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


# --- the session -------------------------------------------------------------------------------


class ManageSieveSession(streams.StreamSession):
    """One client connection: non-authenticated → authenticated (RFC 5804 §1.5, §2)."""

    def __init__(
        self,
        app: Flask,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
    ) -> None:
        super().__init__(app, reader, writer, implicit_tls=implicit_tls, tls_context=tls_context)
        config = app.config
        self.login_timeout = float(config["MANAGESIEVE_LOGIN_TIMEOUT_SECONDS"])
        self.idle_timeout = max(float(config["MANAGESIEVE_AUTOLOGOUT_SECONDS"]), 0.001)
        self.literal_limit = int(config["SIEVE_MAX_SCRIPT_BYTES"])
        self.connections = self.guards.managesieve_connections
        self.account: Account | None = None
        self.between_commands = False

    # --- plumbing

    def say_goodbye(self) -> None:
        """Shutdown: BYE, only when no response is half-written."""
        if self.between_commands and not self.writer.transport.is_closing():
            self.writer.write(response("BYE", "Server shutting down", "TRYLATER"))

    @property
    def timeout(self) -> float:
        return self.login_timeout if self.account is None else self.idle_timeout

    @property
    def actor(self) -> Actor:
        assert self.account is not None
        return Actor(f"mailbox:{self.account.address}", self.peer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        transport = self.writer.transport
        if transport.is_closing():
            raise Disconnect
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.writer.drain()
            except TimeoutError:
                transport.abort()
                raise Disconnect from None

    async def ok(self, text: str = "", code: str | None = None) -> None:
        await self.send(response("OK", text, code))

    async def no(self, text: str, code: str | None = None) -> None:
        await self.send(response("NO", text, code))

    async def bye(self, text: str, code: str | None = None) -> None:
        with contextlib.suppress(ConnectionError, Disconnect):
            await self.send(response("BYE", text, code))
        raise Disconnect

    async def bad(self, text: str) -> None:
        """A malformed, unknown or misplaced command; too many end the session."""
        self.bad_commands += 1
        await self.no(text)
        budget = BAD_BEFORE_LOGIN if self.account is None else BAD_AFTER_LOGIN
        if self.bad_commands >= budget:
            await self.bye("Too many invalid commands")

    async def _timed(self, reading: Awaitable[bytes]) -> bytes:
        """A read from the client within the session's timeout (BYE when it runs out)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await reading
        except TimeoutError:
            await self.bye("Disconnected for inactivity")
        except (asyncio.IncompleteReadError, ConnectionError):
            raise Disconnect from None
        raise AssertionError("unreachable")

    async def read_line(self) -> bytes | None:
        """One line with its line end; None when longer than MAX_LINE (skipped to its end)."""
        too_long = False
        while True:
            try:
                line = await self._timed(self.reader.readuntil(b"\n"))
            except asyncio.LimitOverrunError as error:
                await self.reader.readexactly(max(error.consumed, 1))
                too_long = True
                continue
            return None if too_long else line

    async def read_command(self) -> bytes | None:
        """One command with its literals, without the final line end. None when it was refused
        unread (too long, a literal over the limit): answered here already."""
        data = bytearray()
        literals = 0
        while True:
            line = await self.read_line()
            if line is None:
                await self.bad("Line too long")
                return None
            stripped = line.rstrip(b"\r\n")
            announced = literal_announced(stripped)
            if announced is None:
                data += stripped
                return bytes(data)
            size, _ = announced
            literals += 1
            if size > self.literal_limit or literals > MAX_LITERALS:
                await self._refuse_literal(size)
                return None
            data += stripped + b"\r\n"
            streams.ack_at_once(self.writer)  # the script often comes in a write of its own
            data += await self._timed(self.reader.readexactly(size))

    async def _refuse_literal(self, size: int) -> None:
        """A literal over SIEVE_MAX_SCRIPT_BYTES: skipped in bounded chunks (the client sends
        it anyway: ManageSieve literals from clients are never waited for), with the rest of
        its command, then NO (QUOTA/MAXSIZE); a huge one ends the session unread."""
        if size > self.literal_limit * SKIP_FACTOR:
            await self.bye("Literal too big", "QUOTA/MAXSIZE")
        left = size
        while left:
            chunk = await self._timed(self.reader.readexactly(min(left, SKIP_CHUNK)))
            left -= len(chunk)
        while True:  # the rest of the command, and the lines of further literals in it
            line = await self.read_line()
            if line is None:
                continue
            announced = literal_announced(line.rstrip(b"\r\n"))
            if announced is None:
                break
            if announced[0] > self.literal_limit * SKIP_FACTOR:
                await self.bye("Literal too big", "QUOTA/MAXSIZE")
            left = announced[0]
            while left:
                chunk = await self._timed(self.reader.readexactly(min(left, SKIP_CHUNK)))
                left -= len(chunk)
        self.bad_commands += 1
        await self.no(
            f"Literal too big: at most {self.literal_limit} octets are allowed", "QUOTA/MAXSIZE"
        )

    # --- the loop

    async def run(self) -> None:
        try:
            await self.start_implicit_tls()
            if self.guards.bans.banned(self.peer):
                await self.bye("Too many failed logins from your address", "TRYLATER")
            await self.send_capabilities()
            await self.ok("ManageSieve ready")
            while True:
                self.between_commands = True
                try:
                    command = await self.read_command()
                finally:
                    self.between_commands = False
                if command is not None:
                    await self.handle(command)
        except (Disconnect, ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except Exception:
            log.exception("ManageSieve session failed")
        finally:
            self.release()
            await self.close_connection()

    def release(self) -> None:
        if self.account is not None:
            self.connections.release(self.account.address, self.peer)
            self.account = None

    async def handle(self, command: bytes) -> None:
        try:
            name, arguments = parse_command(command)
        except SyntaxProblem as error:
            await self.bad(str(error))
            return
        if name in ANY_STATE:
            allowed = True
        elif name in NOT_AUTHENTICATED:
            allowed = self.account is None
        elif name in AUTHENTICATED:
            allowed = self.account is not None
        else:
            await self.bad("Unknown command")
            return
        if not allowed:
            await self.bad(f"{name} is not allowed in this state")
            return
        if self.account is not None and name != "LOGOUT":
            reason = await self.recheck_refusal(self.account.mailbox_id, POLICY_PROTOCOL)
            if reason is not None:
                await self.bye(reason)
        handler = getattr(self, f"do_{name}")
        try:
            await handler(arguments)
        except Refused as refusal:
            await self.no(refusal.text, refusal.code)
        except SyntaxProblem as error:
            await self.bad(str(error))
        except NotFound as error:
            await self.no(error.message, "NONEXISTENT")
        except AlreadyExists as error:
            await self.no(error.message, "ALREADYEXISTS")
        except sieve_scripts.ScriptActive as error:
            await self.no(error.message, "ACTIVE")
        except sieve_scripts.TemporaryFailureInStore as error:
            await self.no(error.message, "TRYLATER")
        except ProviderError as error:
            await self.no(error.message)
        except OSError:
            log.exception("ManageSieve store error")
            await self.no("The script store is unavailable; try again", "TRYLATER")

    # --- arguments

    @staticmethod
    def strings(arguments: list[bytes | int], least: int, most: int) -> list[bytes]:
        if not least <= len(arguments) <= most:
            raise SyntaxProblem("Wrong number of arguments")
        if not all(isinstance(argument, bytes) for argument in arguments):
            raise SyntaxProblem("Expected a string")
        return arguments  # type: ignore[return-value]

    @staticmethod
    def text(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("Strings must be valid UTF-8") from None

    # --- any state

    def capabilities(self) -> bytes:
        lines = [
            (b'"IMPLEMENTATION"', IMPLEMENTATION),
            (b'"SASL"', "PLAIN" if self.account is None and self.plaintext_allowed else ""),
            (b'"SIEVE"', SIEVE_CAPABILITY),
        ]
        out = b"".join(key + b" " + string_form(value) + b"\r\n" for key, value in lines)
        if not self.tls_active and self.account is None:
            out += b'"STARTTLS"\r\n'
        return out + b'"VERSION" "1.0"\r\n'

    async def send_capabilities(self) -> None:
        await self.send(self.capabilities())

    async def do_CAPABILITY(self, arguments: list[bytes | int]) -> None:
        self.strings(arguments, 0, 0)
        await self.send_capabilities()
        await self.ok("Capability completed")

    async def do_NOOP(self, arguments: list[bytes | int]) -> None:
        given = self.strings(arguments, 0, 1)
        if not given:
            await self.ok("Done")
        else:
            await self.send(b"OK (TAG " + string_form(given[0]) + b') "Done"\r\n')

    async def do_LOGOUT(self, arguments: list[bytes | int]) -> None:
        await self.ok("Logout completed")
        raise Disconnect

    # --- not authenticated

    async def do_STARTTLS(self, arguments: list[bytes | int]) -> None:
        self.strings(arguments, 0, 0)
        if self.tls_active:
            raise Refused("TLS is already active")
        await self.upgrade_to_tls(response("OK", "Begin TLS negotiation now"))
        # RFC 5804 §2.2: the capabilities again, over TLS.
        await self.send_capabilities()
        await self.ok("TLS negotiation successful")

    async def do_AUTHENTICATE(self, arguments: list[bytes | int]) -> None:
        given = self.strings(arguments, 1, 2)
        if self.text(given[0]).upper() != "PLAIN":
            raise Refused("Unsupported authentication mechanism")
        if not self.plaintext_allowed:
            raise Refused("Plaintext authentication is not allowed without TLS", "ENCRYPT-NEEDED")
        if len(given) == 2:
            answer = given[1]
        else:
            await self.send(b'""\r\n')  # RFC 5804 §2.1: an empty challenge
            data = await self.read_command()
            if data is None:
                return
            try:
                parsed = parse_arguments(b" " + data)
            except SyntaxProblem as error:
                raise Refused(f"Invalid SASL response: {error}") from None
            if len(parsed) != 1 or not isinstance(parsed[0], bytes):
                raise Refused("Invalid SASL response")
            answer = parsed[0]
            if answer == b"*":
                raise Refused("Authentication cancelled")
        try:
            authzid, user, password = parse_sasl_plain(answer or b"=")
        except ValueError as error:
            raise Refused(str(error)) from None
        if authzid and authzid.lower() != user.lower():
            raise Refused("Authorization failed")
        await self.authenticate(user, password)

    async def authenticate(self, user: str, password: str) -> None:
        # As IMAP and POP3: one turn per address with the failure delay inside it; failures
        # count toward the ban shared with IMAP, POP3 and the admin login.
        async with self.guards.logins.turn(self.peer):
            try:
                account: Account = await self.blocking(_check_credentials, user, password)
            except AuthenticationFailed as error:
                if self.guards.bans.failure(self.peer):
                    await self.bye("Too many failed logins from your address", "TRYLATER")
                delay = self.guards.failures.failed(self.peer, user, password)
                if delay > 0:
                    await asyncio.sleep(delay)
                raise Refused(error.message) from None
            except AccessRefused as error:
                raise Refused(error.message) from None
        self.guards.failures.succeeded(self.peer)
        try:
            self.connections.acquire(account.address, self.peer)
        except ProviderError as error:
            raise Refused(error.message, "TRYLATER") from None
        self.account = account
        self.bad_commands = 0
        self.logged_in_now()
        await self.ok("Logged in")

    # --- authenticated

    async def do_UNAUTHENTICATE(self, arguments: list[bytes | int]) -> None:
        self.strings(arguments, 0, 0)
        self.release()
        self.bad_commands = 0
        await self.ok("Unauthenticate completed")

    async def do_LISTSCRIPTS(self, arguments: list[bytes | int]) -> None:
        self.strings(arguments, 0, 0)
        scripts = await self.in_mailbox(_list)
        out = b"".join(
            string_form(info.name) + (b" ACTIVE" if info.active else b"") + b"\r\n"
            for info in scripts
        )
        await self.send(out + response("OK", "Listscripts completed"))

    async def do_GETSCRIPT(self, arguments: list[bytes | int]) -> None:
        (name,) = self.strings(arguments, 1, 1)
        source = await self.in_mailbox(_get, self.text(name))
        await self.send(b"{%d}\r\n" % len(source) + source + b"\r\n")
        await self.ok("Getscript completed")

    async def do_PUTSCRIPT(self, arguments: list[bytes | int]) -> None:
        name, source = self.strings(arguments, 2, 2)
        self.check_size(len(source))
        warnings = await self.in_mailbox(_put, self.text(name), source, self.actor)
        await self.completed("Putscript completed", warnings)

    async def do_CHECKSCRIPT(self, arguments: list[bytes | int]) -> None:
        (source,) = self.strings(arguments, 1, 1)
        self.check_size(len(source))
        warnings = await self.in_mailbox(_check, source)
        await self.completed("Script is valid", warnings)

    async def do_SETACTIVE(self, arguments: list[bytes | int]) -> None:
        (name,) = self.strings(arguments, 1, 1)
        await self.in_mailbox(_activate, self.text(name), self.actor)
        await self.ok("Setactive completed")

    async def do_DELETESCRIPT(self, arguments: list[bytes | int]) -> None:
        (name,) = self.strings(arguments, 1, 1)
        await self.in_mailbox(_delete, self.text(name), self.actor)
        await self.ok("Deletescript completed")

    async def do_RENAMESCRIPT(self, arguments: list[bytes | int]) -> None:
        old, new = self.strings(arguments, 2, 2)
        await self.in_mailbox(_rename, self.text(old), self.text(new), self.actor)
        await self.ok("Renamescript completed")

    async def do_HAVESPACE(self, arguments: list[bytes | int]) -> None:
        if len(arguments) != 2 or not isinstance(arguments[0], bytes):
            raise SyntaxProblem("Expected a script name and a size")
        name, size = arguments
        if not isinstance(size, int):
            raise SyntaxProblem("The size must be a number")
        self.check_size(size)
        await self.in_mailbox(_have_space, self.text(name))
        await self.ok("Putscript would succeed")

    async def completed(self, text: str, warnings: object) -> None:
        """OK, or OK (WARNINGS) with the compiler's warnings (RFC 5804 §1.3)."""
        if isinstance(warnings, tuple) and warnings:
            await self.ok(" ".join(str(warning) for warning in warnings), "WARNINGS")
        else:
            await self.ok(text)

    def check_size(self, size: int) -> None:
        if size > self.literal_limit:
            raise Refused(
                f"The script is too big: at most {self.literal_limit} octets are allowed",
                "QUOTA/MAXSIZE",
            )

    async def in_mailbox(self, function: Callable[..., object], *args: object) -> object:
        """Run a store operation on the logged-in mailbox in a worker thread."""
        assert self.account is not None
        return await self.blocking(_with_mailbox, self.account.mailbox_id, function, *args)


# --- store operations (worker threads, inside an app context) -----------------------------------


def _check_credentials(user: str, password: str) -> Account:
    mailbox = mail_access.login(db.session, user, password, POLICY_PROTOCOL)
    return Account(mailbox.address, mailbox.id)


def _with_mailbox(mailbox_id: int, function: Callable[..., object], *args: object) -> object:
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None:
        raise AccessRefused("This mailbox no longer exists")
    return function(mailbox, *args)


def _list(mailbox: Mailbox) -> list[sieve_scripts.ScriptInfo]:
    return sieve_scripts.list_scripts(mail_store(), mailbox)


def _get(mailbox: Mailbox, name: str) -> bytes:
    return sieve_scripts.get_script(mail_store(), mailbox, name)


def _put(mailbox: Mailbox, name: str, source: bytes, actor: Actor) -> tuple[str, ...]:
    try:
        info = sieve_scripts.put_script(
            db.session, mail_store(), mailbox, name, source, actor=actor
        )
    except sieve_scripts.ScriptLimit as error:
        # The size was checked before: a limit here is the number of scripts.
        raise Refused(error.message, "QUOTA/MAXSCRIPTS") from None
    db.session.commit()
    return info.warnings


def _check(mailbox: Mailbox, source: bytes) -> tuple[str, ...]:
    home = sieve_scripts.home_of(mail_store(), mailbox.address)
    script = sieve_scripts.check_script(mailbox, source, sieve_scripts.limits(), home=home)
    return tuple(script.warnings)


def _activate(mailbox: Mailbox, name: str, actor: Actor) -> None:
    sieve_scripts.activate_script(db.session, mail_store(), mailbox, name, actor=actor)
    db.session.commit()


def _delete(mailbox: Mailbox, name: str, actor: Actor) -> None:
    sieve_scripts.delete_script(db.session, mail_store(), mailbox, name, actor=actor)
    db.session.commit()


def _rename(mailbox: Mailbox, old: str, new: str, actor: Actor) -> None:
    sieve_scripts.rename_script(db.session, mail_store(), mailbox, old, new, actor=actor)
    db.session.commit()


def _have_space(mailbox: Mailbox, name: str) -> None:
    name = sieve_scripts.check_name(name)
    scripts = sieve_scripts.list_scripts(mail_store(), mailbox)
    limit = sieve_scripts.limits()
    if all(info.name != name for info in scripts) and len(scripts) >= limit.max_scripts:
        raise Refused(
            f"{mailbox.address} already has {len(scripts)} scripts; at most "
            f"{limit.max_scripts} are allowed",
            "QUOTA/MAXSCRIPTS",
        )


def protocol_factory(app: Flask) -> Callable[[], asyncio.Protocol]:
    """A factory for asyncio's create_server: one ManageSieveSession per connection."""
    return streams.session_factory(app, ManageSieveSession, implicit_tls=False, line_limit=MAX_LINE)
