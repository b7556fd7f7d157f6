"""The supervisor behind `provider serve`: forks one process per worker of each service, restarts
one that dies (with back-off), and keeps every service's state in a status file for /healthz."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

# Restart back-off: 1 s, 2 s, 4 s … at most 60 s; a worker that ran this long counts as healthy
# again, so its next crash is restarted after the shortest delay.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
STABLE_SECONDS = 30.0
# A (re)started worker that has not said "ready" by then is killed and counted as a failure.
READY_TIMEOUT_SECONDS = 60.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


class ChildFailed(Exception):
    """A service could not start; the message is one line for the operator."""


class StopRequested(Exception):
    """A stop signal arrived while the services were starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ChildContext:
    """What a service's code gets in its process: a way to say "ready" (with lines for the
    supervisor to print) or why it could not start."""

    def __init__(self, name: str, report_fd: int, *, restarted: bool = False) -> None:
        self.name = name
        self._report_fd: int | None = report_fd
        # This process replaces one that died (what it left half-done may need settling).
        self.restarted = restarted

    @property
    def reported(self) -> bool:
        return self._report_fd is None

    def ready(self, lines: Sequence[str] = ()) -> None:
        self._report({"ready": True, "lines": list(lines)})

    def fail(self, message: str) -> None:
        self._report({"error": message})

    def _report(self, message: dict[str, Any]) -> None:
        if self._report_fd is None:
            return
        fd, self._report_fd = self._report_fd, None
        with contextlib.suppress(OSError):  # the supervisor is gone: nothing to tell
            os.write(fd, json.dumps(message).encode() + b"\n")
        os.close(fd)


@dataclass
class Service:
    """One kind of child process: web, mail or scheduler. `run` serves until SIGTERM and
    returns (exit 0), raises (exit 1) or calls sys.exit; `workers` processes are kept up.
    `sockets` are the listening sockets it serves; every other service's are closed in it."""

    name: str
    label: str
    run: Callable[[ChildContext], None]
    workers: int = 1
    sockets: list[Any] = field(default_factory=list)


@dataclass
class Worker:
    """One process of a service, across its restarts."""

    service: Service
    pid: int | None = None
    report: int | None = None  # read end of the readiness pipe
    buffer: bytes = b""
    state: str = "starting"  # starting, running, restarting, stopped
    ready_lines: list[str] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0  # monotonic
    ready_by: float = 0.0
    restart_at: float | None = None
    failures: int = 0  # in a row, for the back-off
    restarts: int = 0
    last_restart_at: datetime | None = None
    last_exit: str | None = None


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def backoff(failures: int) -> float:
    """Seconds before the next start after `failures` failures in a row."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, failures - 1)))


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM to this process when the supervisor dies, even by
    SIGKILL, so no service outlives it holding its ports."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """Starts the services' workers, restarts those that die, stops them all on a signal.

    Single-threaded on purpose: it forks, and a fork copies only the calling thread."""

    def __init__(
        self,
        services: Sequence[Service],
        status_file: Path | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.services = list(services)
        self.workers = [Worker(s) for s in self.services for _ in range(max(1, s.workers))]
        self.status_file = status_file
        self.echo = echo
        self.stopping = False
        self.started = False  # until every worker said "ready" once, a failure ends start-up
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1
        self._stop_signal: int | None = None

    # --- signals ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Signals only write their number to a pipe the loop watches (the handlers do nothing
        else), so they are dealt with in order, at a point where the loop is ready for them."""
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, _note_signal)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)

    def _drain_signals(self) -> list[int]:
        received: list[int] = []
        while True:
            try:
                data = os.read(self._wake_read, 512)
            except BlockingIOError:
                return received
            if not data:
                return received
            received.extend(data)

    # --- start --------------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> list[str]:
        """Start every worker and wait until each said "ready"; the lines they asked to print.
        Raises ChildFailed (after stopping the others) when one could not start, and
        StopRequested when a stop signal came first."""
        now = time.monotonic()
        for worker in self.workers:
            self._spawn(worker)
            worker.ready_by = now + timeout
        self.write_status()
        while any(w.state == "starting" for w in self.workers):
            signals = self._wait(min(w.ready_by for w in self.workers if w.state == "starting"))
            if stop := next((s for s in signals if s in STOP_SIGNALS), None):
                raise StopRequested(stop)
            failed = [w for w in self.workers if w.state == "stopped"]
            late = [w for w in self.workers if w.state == "starting"]
            if not failed and late and time.monotonic() >= min(w.ready_by for w in late):
                failed = [w for w in late if time.monotonic() >= w.ready_by]
                for worker in failed:
                    worker.error = worker.error or f"not ready after {timeout:.0f} s"
            if failed:
                worker = failed[0]
                raise ChildFailed(f"{worker.service.name}: {worker.error or worker.last_exit}")
        self.started = True
        self.write_status()
        return [line for w in self.workers for line in w.ready_lines]

    def _spawn(self, worker: Worker) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            code = 1
            try:
                os.close(read_end)
                self._become_child(worker)
                context = ChildContext(
                    worker.service.name, write_end, restarted=worker.last_exit is not None
                )
                code = _run_service(worker.service, context)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        worker.pid, worker.report, worker.buffer = pid, read_end, b""
        worker.state, worker.error, worker.ready_lines = "starting", None, []
        worker.started = time.monotonic()
        worker.ready_by = worker.started + READY_TIMEOUT_SECONDS
        worker.restart_at = None
        self._selector.register(read_end, selectors.EVENT_READ, worker)

    def _become_child(self, worker: Worker) -> None:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        # A process group of its own: a terminal's Ctrl-C reaches only the supervisor, which
        # then stops the services in order (SIGTERM, a grace period, then SIGKILL).
        os.setpgid(0, 0)
        _die_with_parent()
        if os.getppid() != parent:  # the supervisor died before PDEATHSIG was set
            os._exit(1)
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        for other in self.workers:
            if other.report is not None:
                os.close(other.report)
        own = {id(sock) for sock in worker.service.sockets}
        for service in self.services:
            for sock in service.sockets:
                if id(sock) not in own:
                    sock.close()

    # --- run ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Keep the services up until a stop signal; return that signal's number."""
        while True:
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            due += [w.ready_by for w in self.workers if w.state == "starting"]
            signals = self._wait(min(due) if due else None)
            if stop := next((s for s in signals if s in STOP_SIGNALS), None):
                return stop
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker)
                    self.write_status()
                elif worker.state == "starting" and worker.pid and now >= worker.ready_by:
                    worker.error = f"not ready after {READY_TIMEOUT_SECONDS:.0f} s"
                    # Killed once: no deadline until it is reaped (a child stuck in the kernel
                    # may take a while to go, and the loop must not spin meanwhile).
                    worker.ready_by = math.inf
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)

    def _wait(self, until: float | None) -> list[int]:
        """Wait for a signal, a readiness report or the deadline; handle what came."""
        timeout = None if until is None else max(0.0, until - time.monotonic())
        events = self._selector.select(timeout)
        signals: list[int] = []
        for key, _ in events:
            if key.fileobj == self._wake_read:
                signals.extend(self._drain_signals())
            else:
                self._read_report(key.data)
        self._reap()
        return signals

    def _read_report(self, worker: Worker, final: bool = False) -> None:
        """Read what the worker reported; `final`: it has exited, read what is left and close."""
        assert worker.report is not None
        try:
            data = os.read(worker.report, 65536)
        except BlockingIOError:
            if not final:
                return
            data = b""
        except OSError:
            data = b""
        worker.buffer += data
        if b"\n" in worker.buffer:
            line, _, worker.buffer = worker.buffer.partition(b"\n")
            try:
                message = json.loads(line)
            except ValueError:
                message = {"error": "unreadable report"}
            if message.get("ready"):
                self._mark_ready(worker, [str(x) for x in message.get("lines", [])])
            else:
                worker.error = str(message.get("error"))
        if not data or final or worker.state != "starting":
            self._selector.unregister(worker.report)
            os.close(worker.report)
            worker.report = None

    def _mark_ready(self, worker: Worker, lines: list[str]) -> None:
        first_start = worker.last_exit is None
        worker.state, worker.ready_lines = "running", lines
        if not first_start:
            worker.restarts += 1
            worker.last_restart_at = datetime.now(UTC).replace(microsecond=0)
        self.write_status()  # before saying so: whoever reads the line finds it in the file
        if not first_start:
            self.echo(f"{worker.service.name}: restarted (pid {worker.pid})")

    def _reap(self) -> None:
        for worker in self.workers:
            if worker.pid is None:
                continue
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            self._exited(worker, describe_exit(status))

    def _exited(self, worker: Worker, how: str) -> None:
        ran = time.monotonic() - worker.started
        was = worker.state
        worker.pid = None
        worker.last_exit = how
        if worker.report is not None:  # what it said before exiting (why it could not start)
            self._read_report(worker, final=True)
        if self.stopping or not self.started:
            worker.state = "stopped"
            return
        worker.failures = 1 if (was == "running" and ran >= STABLE_SECONDS) else worker.failures + 1
        delay = backoff(worker.failures)
        worker.state, worker.restart_at = "restarting", time.monotonic() + delay
        self.write_status()
        reason = f"{how}: {worker.error}" if worker.error else how
        self.echo(f"{worker.service.name}: {reason}; restarting in {delay:g} s")

    # --- stop ---------------------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after `grace` seconds (or at
        a second stop signal). Waits until all are gone."""
        self.stopping = True
        for worker in self.workers:
            worker.restart_at = None
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
            else:
                worker.state = "stopped"
        deadline = time.monotonic() + grace
        killed = False
        while any(w.pid is not None for w in self.workers):
            # At most a second between looks, in case a SIGCHLD went to an earlier wait.
            soon = time.monotonic() + 1.0
            signals = self._wait(soon if killed else min(deadline, soon))
            late = time.monotonic() >= deadline or any(s in STOP_SIGNALS for s in signals)
            if late and not killed:
                killed = True
                for worker in self.workers:
                    if worker.pid is not None:
                        self.echo(f"{worker.service.name}: still running; killed")
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker.pid, signal.SIGKILL)
        self.write_status()

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self.status_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.status_file.unlink()

    # --- status -------------------------------------------------------------------------------

    def states(self) -> list[dict[str, Any]]:
        records = []
        for service in self.services:
            workers = [w for w in self.workers if w.service is service]
            if all(w.state == "running" for w in workers):
                state = "running"
            elif all(w.state == "stopped" for w in workers):
                state = "stopped"
            elif any(w.last_exit for w in workers):
                state = "restarting"
            else:
                state = "starting"
            restarted = [w.last_restart_at for w in workers if w.last_restart_at]
            exits = [w.last_exit for w in workers if w.last_exit and w.restarts]
            records.append(
                {
                    "name": service.name,
                    "label": service.label,
                    "state": state,
                    "pids": [w.pid for w in workers if w.pid is not None],
                    "restarts": sum(w.restarts for w in workers),
                    "last_restart_at": max(restarted).isoformat() if restarted else None,
                    "last_exit": exits[-1] if exits else None,
                }
            )
        return records

    def write_status(self) -> None:
        """Best effort: a full disk must not stop the supervisor (and with it every service);
        /healthz then shows the last state written until the next change gets through."""
        if self.status_file is None:
            return
        record = {"supervisor_pid": os.getpid(), "services": self.states()}
        draft = self.status_file.with_name(f".{self.status_file.name}.tmp")
        try:
            draft.write_text(json.dumps(record, indent=1))
            os.replace(draft, self.status_file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                draft.unlink(missing_ok=True)
            log.warning("service states not written to %s: %s", self.status_file, exc)


def _note_signal(_signum: int, _frame: FrameType | None) -> None:
    """Nothing: the signal's number already went to the wakeup pipe."""


def _run_service(service: Service, context: ChildContext) -> int:
    """Run a service in its child process; the exit code. A failure before "ready" is one line
    (sent to the supervisor, which prints it); a crash of a running service is a traceback on
    stderr, since it is a bug to fix."""
    try:
        service.run(context)
    except SystemExit as exc:  # gunicorn's master and workers leave through sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        detail = str(exc).strip().splitlines()
        message = detail[0] if detail else type(exc).__name__
        if not isinstance(exc, OSError | ValueError):
            message = f"{type(exc).__name__}: {message}"
        if not context.reported:
            context.fail(message)
        else:
            print(f"{service.name}: crashed: {message}", file=sys.stderr)
            traceback.print_exc()
        return 1
    return 0


# --- the status file, as the web app reads it ---------------------------------------------------


@dataclass(frozen=True)
class ServiceState:
    """A service as the supervisor last described it."""

    name: str
    label: str
    state: str
    pids: tuple[int, ...]
    restarts: int
    last_restart_at: datetime | None
    last_exit: str | None

    @property
    def summary(self) -> str:
        """One line for people: "running", "restarting", "running, restarted 2 times, last at
        2026-12-06 09:55:12 UTC (killed by SIGKILL)"."""
        text = self.state
        if self.restarts:
            times = "time" if self.restarts == 1 else "times"
            when = (
                self.last_restart_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                if self.last_restart_at
                else "?"
            )
            text += f", restarted {self.restarts} {times}, last at {when}"
            if self.last_exit:
                text += f" ({self.last_exit})"
        return text


def read_states(path: str | os.PathLike[str] | None) -> list[ServiceState] | None:
    """The services' states from the supervisor's status file; None when there is none (the
    app runs outside `provider serve`) or it cannot be read."""
    if not path:
        return None
    try:
        record = json.loads(Path(path).read_text())
        return [
            ServiceState(
                name=str(item["name"]),
                label=str(item.get("label") or item["name"]),
                state=str(item["state"]),
                pids=tuple(int(p) for p in item.get("pids", [])),
                restarts=int(item.get("restarts", 0)),
                last_restart_at=(
                    datetime.fromisoformat(item["last_restart_at"])
                    if item.get("last_restart_at")
                    else None
                ),
                last_exit=item.get("last_exit"),
            )
            for item in record["services"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def status_path(instance_dir: str | os.PathLike[str], pid: int) -> Path:
    """Where the supervisor with this pid keeps its status file (one per `provider serve`, so
    two of them on one instance directory do not mix their states)."""
    return Path(instance_dir) / "run" / f"serve-{pid}.json"


def remove_stale_status_files(directory: Path) -> None:
    """Status files left by supervisors that were killed (their pid is gone)."""
    for path in directory.glob("serve-*.json"):
        try:
            pid = int(path.stem.removeprefix("serve-"))
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (what the system allows), so
    thousands of idle mail connections never run a process out of descriptors; the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft
