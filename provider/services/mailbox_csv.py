"""CSV import and export of mailboxes: read a file, check every row (the dry run), create all
or nothing, and write the current state back in the same columns."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import multiprocessing
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from provider.errors import InvalidInput, ProviderError
from provider.mailstore import MailStore
from provider.mailstore.uidlist import fsync_deferred
from provider.models import Domain, Mailbox, Plan
from provider.models.mailbox import Pop3Action
from provider.services import audit, auth, provisioning, quota, storage, webhooks
from provider.services.aftercommit import on_rollback
from provider.services.audit import Actor

log = logging.getLogger(__name__)

# The columns, in the order export writes them and a file without a header row is read in.
COLUMNS = ("address", "quota", "protocols", "password", "plan", "contact", "pop3_action")
REQUIRED_COLUMNS = ("address", "quota", "protocols", "password")
# Header names other tools write for the same columns (the CLI's and the forms' names).
COLUMN_ALIASES = {"quota_gb": "quota", "contact_email": "contact", "protocol": "protocols"}
GENERATE = "generate"

# Limits of one import: 10,000 rows is the size promised to take about a minute with enough
# cores (bench/RESULTS.md); 4 MiB holds 10,000 rows of 400 bytes, far more than real rows.
MAX_IMPORT_ROWS = 10_000
MAX_IMPORT_BYTES = 4 * 1024 * 1024
# No column holds more than a password (auth.MAX_PASSWORD_LENGTH); the csv module's own limit
# (128 KiB per field) stops a runaway quoted field before this is checked.
MAX_CELL_CHARS = auth.MAX_PASSWORD_LENGTH

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP):
# export writes such a cell with a leading apostrophe, and import takes that apostrophe off.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
QUOTA_UNIT = re.compile(r"\s*(gib|gb|g)$", re.IGNORECASE)
PROTOCOL_SEPARATORS = re.compile(r"[\s+/;|]+")
ARGON2_PREFIX = re.compile(r"\{ARGON2I?D?\}\$argon2", re.IGNORECASE)
REQUIRED_MESSAGE = "This field is required."

# A few Maildirs are made by this many threads at once; from PARALLEL_MAILDIR_MIN on, by one
# worker process per core, MAILDIR_CHUNK addresses a task (see _make_maildirs).
MAILDIR_THREADS = 8
PARALLEL_MAILDIR_MIN = 200
MAILDIR_CHUNK = 500
# Below this many passwords, hashing in this process beats starting worker processes.
PARALLEL_HASH_MIN = 16


class ImportFileError(InvalidInput):
    """The file as a whole cannot be read as mailbox CSV (encoding, size, header, quoting)."""


@dataclass(frozen=True)
class RowError:
    """What is wrong with one cell (or, `column` None, with a whole row or the file)."""

    line: int
    column: str | None
    message: str

    @property
    def where(self) -> str:
        """`line 3, quota`, `line 3` (the whole row) or `file`."""
        place = f"line {self.line}" if self.line else "file"
        return f"{place}, {self.column}" if self.column else place

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}


@dataclass(frozen=True)
class NewMailbox:
    """A row that passed every check, normalized, ready to create."""

    domain: Domain
    local_part: str
    quota_bytes: int
    protocols: frozenset[str]
    password: str | None  # None: make one up (unless password_hash)
    plan: str
    contact_email: str | None
    pop3_action: str
    # A hash brought from another system (`{SHA512-CRYPT}$6$…`), stored as it is.
    password_hash: str | None = None
    password_scheme: str | None = None

    @property
    def makes_up_password(self) -> bool:
        return self.password is None and self.password_hash is None


@dataclass
class RowOutcome:
    """One data row of the file: the mailbox it would create (or created), or its errors."""

    line: int
    address: str
    errors: list[RowError] = field(default_factory=list)
    new: NewMailbox | None = None

    @property
    def outcome(self) -> str:
        return "error" if self.errors else "create"

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "address": self.address,
            "outcome": self.outcome,
            "generate_password": bool(self.new and self.new.makes_up_password),
            "password_scheme": self.new.password_scheme if self.new else None,
            "errors": [error.to_dict() for error in self.errors],
        }


@dataclass
class ImportReport:
    """The outcome of an import: every row's, the file's own errors, and what was applied.

    `passwords` holds the made-up passwords (address, password) after an apply, the one time
    they are ever shown."""

    rows: list[RowOutcome] = field(default_factory=list)
    file_errors: list[RowError] = field(default_factory=list)
    applied: bool = False
    passwords: list[tuple[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[RowError]:
        return [*self.file_errors, *(error for row in self.rows for error in row.errors)]

    @property
    def ok(self) -> bool:
        return not self.file_errors and all(not row.errors for row in self.rows)

    def error_lines(self) -> list[str]:
        """One line per file error and per bad row (its cells' errors joined)."""
        lines = [str(error) for error in self.file_errors]
        for row in self.rows:
            if row.errors:
                lines.append(
                    f"line {row.line}: "
                    + "; ".join(
                        f"{error.column}: {error.message}" if error.column else error.message
                        for error in row.errors
                    )
                )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "ok": self.ok,
            "rows": [row.to_dict() for row in self.rows],
            "file_errors": [error.to_dict() for error in self.file_errors],
            "created": sum(1 for row in self.rows if not row.errors) if self.applied else 0,
            "passwords": [{"address": a, "password": p} for a, p in self.passwords],
        }

    def passwords_csv(self) -> str:
        """The made-up passwords as CSV (address,password) for the admin to hand out."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(("address", "password"))
        writer.writerows(self.passwords)
        return out.getvalue()


# --- reading the file ------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvRecord:
    """A data row: the line it starts on and its cells by column name."""

    line: int
    cells: dict[str, str]
    error: str | None = None  # a row that does not fit the columns


def decode(data: bytes) -> str:
    """The file's text: UTF-8, with or without a byte-order mark; refused with the line of the
    first bad byte otherwise."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportFileError(
            f"the file is {len(data)} bytes; an import takes at most {MAX_IMPORT_BYTES} bytes "
            f"and {MAX_IMPORT_ROWS} rows, so split it"
        )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ImportFileError(
            f"line {line}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save it as CSV UTF-8"
        ) from None


def _delimiter(text: str) -> str:
    """`;` when the first line has more of them than commas (Excel in many locales), else `,`."""
    first = text.split("\n", 1)[0]
    return ";" if first.count(";") > first.count(",") else ","


def _column_name(raw: str) -> str:
    name = re.sub(r"[\s-]+", "_", raw.strip().lower())
    return COLUMN_ALIASES.get(name, name)


def _header(cells: list[str]) -> list[str]:
    names = [_column_name(cell) for cell in cells]
    unknown = [raw.strip() for raw, name in zip(cells, names, strict=True) if name not in COLUMNS]
    if unknown:
        raise ImportFileError(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are {', '.join(COLUMNS)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ImportFileError(f"line 1: column(s) {', '.join(repeated)} given twice")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ImportFileError(f"line 1: the header lacks the column(s) {', '.join(missing)}")
    return names


def read_records(data: bytes) -> list[CsvRecord]:
    """The file's data rows. A first row whose first cell is `address` is the header, naming
    the columns in any order; without one the columns are COLUMNS in order (trailing optional
    ones may be left out). Blank lines are skipped; quoted cells may hold the delimiter."""
    text = decode(data)
    if not text.strip():
        raise ImportFileError("the file is empty")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    records: list[CsvRecord] = []
    names: list[str] | None = None
    header_checked = False
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if not header_checked:
                header_checked = True
                if cells[0].strip().lower().lstrip("\ufeff") == "address":
                    names = _header(cells)
                    continue
            if len(records) >= MAX_IMPORT_ROWS:
                raise ImportFileError(
                    f"line {start}: more than {MAX_IMPORT_ROWS} rows; split the file"
                )
            records.append(_record(start, cells, names))
    except csv.Error as exc:
        raise ImportFileError(f"line {reader.line_num}: {exc}") from None
    if not records:
        raise ImportFileError("the file has no mailbox rows")
    return records


def _comma_hint(cells: list[str]) -> str:
    """What splits a row most often in a migration: an argon2 hash's `m=…,t=…,p=…` unquoted."""
    if any(ARGON2_PREFIX.match(cell.strip()) for cell in cells):
        return "; an argon2 hash holds commas (m=…,t=…,p=…): put it in double quotes"
    return ""


def _record(line: int, cells: list[str], names: list[str] | None) -> CsvRecord:
    if names is None:
        if len(cells) > len(COLUMNS):
            return CsvRecord(
                line,
                {},
                f"{len(cells)} cells, but there are only {len(COLUMNS)} columns "
                f"({', '.join(COLUMNS)}){_comma_hint(cells)}",
            )
        return CsvRecord(line, dict(zip(COLUMNS, cells, strict=False)))
    if len(cells) != len(names):
        return CsvRecord(
            line,
            {},
            f"{len(cells)} cells where the header has {len(names)} columns{_comma_hint(cells)}",
        )
    return CsvRecord(line, dict(zip(names, cells, strict=True)))


# --- checking rows (the dry run) -------------------------------------------------------------


def _unguard(value: str) -> str:
    """Take off the apostrophe that export puts before a cell a spreadsheet would run."""
    if value.startswith("'") and value[1:2] and value[1] in FORMULA_TRIGGERS:
        return value[1:]
    return value


def quota_text(value: str) -> str:
    """A quota cell as the quota service reads it: `10`, `10 GB`, `10G`, `10.5`, `10,5`."""
    amount = QUOTA_UNIT.sub("", value.strip())
    if "," in amount and "." not in amount and amount.count(",") == 1:
        amount = amount.replace(",", ".")  # a decimal comma, as Excel writes in many locales
    return amount


def _protocols_text(value: str) -> str:
    return ",".join(part for part in PROTOCOL_SEPARATORS.split(value.strip()) if part)


class _RowChecker:
    """Checks the rows of one file against the database as it is, with a few queries in all."""

    def __init__(self, session: Session, records: list[CsvRecord], scope: set[int] | None):
        self.session = session
        self.scope = scope
        self.records = records
        self.domains: dict[str, Domain] = {}
        self.taken: dict[str, str] = {}
        self.seen: dict[str, int] = {}

    def load(self, addresses: Iterable[tuple[str, str]]) -> None:
        pairs = list(addresses)
        names = sorted({domain for _local, domain in pairs})
        for start in range(0, len(names), provisioning.TAKEN_CHUNK):
            chunk = names[start : start + provisioning.TAKEN_CHUNK]
            for domain in self.session.scalars(select(Domain).where(Domain.name.in_(chunk))):
                self.domains[domain.name] = domain
        self.taken = provisioning.taken_addresses(
            self.session, (f"{local}@{domain}" for local, domain in pairs)
        )

    def check(self) -> list[RowOutcome]:
        outcomes: list[RowOutcome] = []
        parsed: list[tuple[RowOutcome, dict[str, str], tuple[str, str] | None]] = []
        for record in self.records:
            outcome = RowOutcome(record.line, _unguard(record.cells.get("address", "").strip()))
            if record.error:
                outcome.errors.append(RowError(record.line, None, record.error))
                parsed.append((outcome, {}, None))
                continue
            cells = {name: value.strip() for name, value in record.cells.items()}
            for name, value in cells.items():
                if name != "password":
                    cells[name] = _unguard(value)
                if CONTROL_CHARACTERS.search(value):
                    outcome.errors.append(
                        RowError(
                            record.line,
                            name,
                            "must not contain control characters (NUL, tab, line breaks)",
                        )
                    )
                elif len(value) > MAX_CELL_CHARS:
                    outcome.errors.append(
                        RowError(record.line, name, f"longer than {MAX_CELL_CHARS} characters")
                    )
            address = None
            if not any(error.column == "address" for error in outcome.errors):
                address = self._address(outcome, cells.get("address", ""))
            parsed.append((outcome, cells, address))
        self.load(address for _o, _c, address in parsed if address)
        for outcome, cells, address in parsed:
            if cells:
                self._row(outcome, cells, address)
            outcomes.append(outcome)
        return outcomes

    def _address(self, outcome: RowOutcome, value: str) -> tuple[str, str] | None:
        if not value:
            outcome.errors.append(RowError(outcome.line, "address", REQUIRED_MESSAGE))
            return None
        try:
            local, domain = provisioning.split_address(value)
        except ProviderError as exc:
            outcome.errors.append(RowError(outcome.line, "address", exc.message))
            return None
        outcome.address = f"{local}@{domain}"
        return local, domain

    def _row(
        self, outcome: RowOutcome, cells: dict[str, str], address: tuple[str, str] | None
    ) -> None:
        line = outcome.line
        errors = outcome.errors

        def attempt(column: str, parse: Callable[[], Any]) -> Any:
            if any(error.column == column for error in errors):
                return None
            try:
                return parse()
            except ProviderError as exc:
                errors.append(RowError(line, column, exc.message))
                return None

        local, domain_name = address or ("", "")
        full = f"{local}@{domain_name}" if address else ""
        domain = self.domains.get(domain_name)
        if address is None:
            domain = None
        elif self.scope is not None and (domain is None or domain.id not in self.scope):
            # A domain admin learns nothing of other tenants: a missing domain reads the same.
            errors.append(RowError(line, "address", provisioning.OUT_OF_SCOPE))
            domain = None
        elif domain is None:
            errors.append(
                RowError(line, "address", f"domain {domain_name} is not hosted here; add it first")
            )
        elif full in self.taken:
            errors.append(RowError(line, "address", self.taken[full]))
        elif full in self.seen:
            errors.append(RowError(line, "address", f"{full} is on line {self.seen[full]} already"))
        if address:
            self.seen.setdefault(full, line)

        def required(column: str) -> str | None:
            value = cells.get(column, "")
            if not value and not any(error.column == column for error in errors):
                errors.append(RowError(line, column, REQUIRED_MESSAGE))
                return None
            return value

        quota_cell = required("quota")
        quota_bytes = (
            attempt("quota", lambda: quota.quota_bytes_from_gb(quota_text(quota_cell)))
            if quota_cell is not None
            else None
        )
        protocols_cell = required("protocols")
        protocols = (
            attempt(
                "protocols", lambda: provisioning.parse_protocols(_protocols_text(protocols_cell))
            )
            if protocols_cell is not None
            else None
        )
        password_cell = required("password")
        password: str | None = None
        given: auth.ImportedPassword | None = None
        if password_cell is not None and password_cell.lower() != GENERATE:
            given = attempt("password", lambda: auth.read_imported_password(password_cell))
            password = given.password if given else None
            if password is not None:
                clear = password
                attempt("password", lambda: auth.check_password_policy(clear, address=full))
        plan = attempt("plan", lambda: _plan(cells.get("plan", "")))
        contact = attempt("contact", lambda: provisioning.normalize_contact(cells.get("contact")))
        action = attempt(
            "pop3_action",
            lambda: provisioning.parse_pop3_action(cells.get("pop3_action") or Pop3Action.KEEP),
        )
        if errors or domain is None or address is None:
            return
        outcome.new = NewMailbox(
            domain=domain,
            local_part=local,
            quota_bytes=quota_bytes,
            protocols=frozenset(protocols),
            password=password,
            plan=plan,
            contact_email=contact,
            pop3_action=action,
            password_hash=given.stored_hash if given else None,
            password_scheme=given.scheme if given else None,
        )


def _plan(value: str) -> str:
    try:
        return Plan((value or Plan.PAID.value).strip().lower()).value
    except ValueError:
        raise InvalidInput(f"unknown plan {value!r}: trial or paid", "plan") from None


def check_import(session: Session, data: bytes, *, scope: set[int] | None) -> ImportReport:
    """The dry run: every row's outcome and errors, by line and column, changing nothing.

    `scope` is the domain ids of a domain admin (None for a superadmin): rows in any other
    domain are refused as if it did not exist."""
    try:
        records = read_records(data)
    except ImportFileError as exc:
        return ImportReport(file_errors=[_file_error(exc.message)])
    return ImportReport(rows=_RowChecker(session, records, scope).check())


def _file_error(message: str) -> RowError:
    match = re.match(r"line (\d+): (.*)", message, re.S)
    return (
        RowError(int(match.group(1)), None, match.group(2)) if match else RowError(0, None, message)
    )


# --- applying --------------------------------------------------------------------------------


def hash_passwords(passwords: Sequence[str], workers: int | None = None) -> list[str]:
    """argon2id hashes of the passwords at the configured cost, in parallel processes (one per
    core unless `workers` says) when there are enough to pay for starting them."""
    params = auth.current_params()
    workers = workers or len(os.sched_getaffinity(0))
    if workers <= 1 or len(passwords) < PARALLEL_HASH_MIN:
        return [auth.hash_password(password, params) for password in passwords]
    # spawn, not fork: the web and CLI processes may run threads, and a forked child of a
    # threaded process can deadlock on a lock some thread held at the fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        chunk = max(1, min(64, len(passwords) // (workers * 4)))
        return list(
            pool.map(partial(auth.hash_password, params=params), passwords, chunksize=chunk)
        )


def _make_maildirs(store: MailStore, addresses: list[str], workers: int | None = None) -> list[str]:
    """Create the Maildirs; on any failure remove those made here and raise. Returns the
    addresses whose Maildir this call created (one that was there already is left be).

    Many are made in worker processes (one per core), a few in threads. The work is almost
    all system calls (37 inodes a mailbox), and meanwhile this process's main thread inserts
    the rows: threads here would share its GIL, processes do not (on the loaded 2-core machine
    the difference was within the noise, bench/RESULTS.md; spawning costs a second or two)."""
    fresh = [address for address in addresses if not store.exists(address)]
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(fresh) >= PARALLEL_MAILDIR_MIN:
        made, failure = _make_in_processes(store, fresh, workers)
    else:
        made, failure = _make_in_threads(store, fresh)
    if failure is None:
        try:
            # One sync(2) for them all instead of ~20 fsyncs each: on disk before the commit.
            os.sync()
        except BaseException as exc:
            failure = exc
    if failure is not None:
        _remove_maildirs(store, made)
        raise failure
    return made


def _make_in_threads(
    store: MailStore, addresses: list[str]
) -> tuple[list[str], BaseException | None]:
    made: list[str] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=MAILDIR_THREADS) as pool:
        futures: dict[Future[Any], str] = {
            pool.submit(_create_without_fsync, store, a): a for a in addresses
        }
        for future, address in futures.items():
            try:
                future.result()
            except BaseException as exc:  # kept, re-raised after the clean-up
                failure = failure or exc
            made.append(address)  # a failed one may be half made: removed too
    return made, failure


def _make_in_processes(
    store: MailStore, addresses: list[str], workers: int
) -> tuple[list[str], BaseException | None]:
    chunk = max(1, min(MAILDIR_CHUNK, -(-len(addresses) // workers)))
    chunks = [addresses[start : start + chunk] for start in range(0, len(addresses), chunk)]
    made: list[str] = []
    failure: BaseException | None = None
    # spawn, as for the hashing: this process runs threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_create_chunk, str(store.root), store.lock_timeout, part) for part in chunks
        ]
        for future, part in zip(futures, chunks, strict=True):
            try:
                done, error = future.result()
            except BaseException as exc:  # the worker died: any of its chunk may be there
                done, error = part, exc
            made.extend(done)
            failure = failure or error
    return made, failure


def _create_chunk(
    root: str, lock_timeout: float, addresses: list[str]
) -> tuple[list[str], BaseException | None]:
    """In a worker process: make these Maildirs; the ones touched, and the first error."""
    store = MailStore(root, lock_timeout=lock_timeout)
    made: list[str] = []
    for address in addresses:
        made.append(address)  # before: a failed one may be half made
        try:
            _create_without_fsync(store, address)
        except Exception as exc:
            return made, exc
    return made, None


def _create_without_fsync(store: MailStore, address: str) -> None:
    with fsync_deferred():  # for create(), should an old crash have left part of this one
        store.create_unsynced(address)


def _remove_maildirs(store: MailStore, addresses: list[str]) -> None:
    for address in addresses:
        try:
            store.remove(address)
        except OSError:
            log.exception("could not remove the Maildir of %s after a failed import", address)


def import_mailboxes(
    session: Session,
    data: bytes,
    *,
    scope: set[int] | None,
    actor: Actor,
    dry_run: bool = False,
    hash_workers: int | None = None,
) -> ImportReport:
    """Check the file and, unless `dry_run` or any row is wrong, create every mailbox in it.

    All or nothing: with one error nothing is written. The rows are flushed in the caller's
    transaction (the caller commits, as for every service); the Maildirs are made before the
    commit, like create_mailbox's, and removed again if the transaction rolls back. A made-up
    password is in `report.passwords`, the only place it is ever shown."""
    report = check_import(session, data, scope=scope)
    if dry_run or not report.ok:
        return report
    rows = [row for row in report.rows if row.new is not None]
    generated = {
        row.line: secrets.token_urlsafe(12) for row in rows if row.new and row.new.makes_up_password
    }
    # A hash brought along is stored as it is: only the other rows cost an argon2id each.
    to_hash = [row for row in rows if row.new and row.new.password_hash is None]
    addresses = [row.address for row in rows]
    store = storage.mail_store()
    # The Maildirs (in threads: kernel time, mostly) are made while this thread hashes (in
    # processes) and inserts the rows; the caller's commit comes after both. With hashes
    # brought from another server there is no hashing, and the inserts are the overlap.
    with ThreadPoolExecutor(max_workers=1) as background:
        maildirs = background.submit(_make_maildirs, store, addresses)
        try:
            fresh = hash_passwords(
                [generated.get(row.line) or row.new.password or "" for row in to_hash if row.new],
                hash_workers,
            )
            by_line = dict(zip((row.line for row in to_hash), fresh, strict=True))
            hashes = [
                row.new.password_hash if row.new and row.new.password_hash else by_line[row.line]
                for row in rows
            ]
            _insert(session, rows, hashes, actor)
        except BaseException:
            _remove_maildirs(store, _wait_quietly(maildirs))
            session.rollback()
            raise
        try:
            made = maildirs.result()
        except BaseException:  # it removed the Maildirs it had made
            session.rollback()
            raise
    on_rollback(session, partial(_remove_maildirs, store, made))
    report.applied = True
    report.passwords = [(row.address, generated[row.line]) for row in rows if row.line in generated]
    return report


def _wait_quietly(future: Future[list[str]]) -> list[str]:
    try:
        return future.result()
    except BaseException:  # it removed its own Maildirs already
        return []


def _insert(session: Session, rows: list[RowOutcome], hashes: list[str], actor: Actor) -> None:
    mailboxes = []
    for row, password_hash in zip(rows, hashes, strict=True):
        new = row.new
        assert new is not None
        mailbox = provisioning.new_mailbox(
            new.domain,
            new.local_part,
            password_hash,
            new.quota_bytes,
            set(new.protocols),
            plan=new.plan,
            contact_email=new.contact_email,
            pop3_action=new.pop3_action,
        )
        set_committed_value(mailbox, "aliases", [])  # new: none, and no query to learn it
        mailboxes.append(mailbox)
    session.add_all(mailboxes)
    session.flush()
    created: list[tuple[str | None, str, dict[str, Any]]] = []
    for mailbox in mailboxes:
        record = mailbox.to_dict()
        audit.record(
            session, actor, "mailbox.create", mailbox.address, domain=record["domain"], after=record
        )
        created.append((record["domain"], webhooks.mailbox_key(mailbox.address), record))
    # An imported mailbox is a created one: receivers hear of it as of one made by hand.
    webhooks.emit_many(session, "mailbox.created", created)
    domains = sorted({mailbox.domain.name for mailbox in mailboxes})
    audit.record(
        session,
        actor,
        "mailbox.import",
        f"{len(mailboxes)} mailboxes",
        domain=domains[0] if len(domains) == 1 else None,
        after={"created": len(mailboxes), "domains": domains},
    )
    session.flush()


# --- export ----------------------------------------------------------------------------------


def _guard(value: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading apostrophe (shown as text)."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def _protocols_cell(protocols: list[str]) -> str:
    return "both" if len(protocols) == 2 else protocols[0]


def export_rows(session: Session, *, domain_ids: set[int] | None = None) -> list[dict[str, str]]:
    """The mailboxes (of these domains; None = all) as CSV rows in COLUMNS, sorted by address.
    No password leaves: the column says `generate`, so importing the file elsewhere makes new
    ones (shown once) rather than failing."""
    query = select(Mailbox).options(selectinload(Mailbox.domain)).order_by(Mailbox.address)
    if domain_ids is not None:
        query = query.where(Mailbox.domain_id.in_(sorted(domain_ids)))
    return [
        {
            "address": mailbox.address,
            "quota": quota.format_gb(Decimal(mailbox.quota_bytes) / quota.GIB),
            "protocols": _protocols_cell(mailbox.protocols),
            "password": GENERATE,
            "plan": mailbox.plan,
            "contact": mailbox.contact_email or "",
            "pop3_action": mailbox.pop3_action,
        }
        for mailbox in session.scalars(query)
    ]


def write_csv(rows: Iterable[dict[str, str]], out: io.TextIOBase | Any) -> None:
    """Write rows as CSV (header, CRLF, every cell guarded against formulas) to a text file."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_guard(row[column]) for column in COLUMNS])


def export_csv(session: Session, *, domain_ids: set[int] | None = None) -> str:
    """export_rows as the text of a CSV file."""
    out = io.StringIO()
    write_csv(export_rows(session, domain_ids=domain_ids), out)
    return out.getvalue()
