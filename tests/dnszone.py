"""A real DNS server for test zones: dnsmasq (Debian's dnsmasq-base) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.conftest import wait_until

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes (RFC 1035)


def require_dnsmasq() -> None:
    """Skip when dnsmasq is missing, unless CI requires the external programs."""
    if not os.path.exists(DNSMASQ):
        if os.environ.get("PROVIDER_REQUIRE_CLIENTS"):
            pytest.fail("dnsmasq is not installed (apt-get install dnsmasq-base)")
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on `host` right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def _quoted(text: str) -> str:
    """A TXT value as dnsmasq's quoted strings, split into 255-byte character-strings."""
    if '"' in text or "\\" in text:
        raise ValueError("test TXT records may not hold quotes or backslashes")
    chunks = [text[i : i + TXT_CHUNK] for i in range(0, len(text), TXT_CHUNK)] or [""]
    return ",".join(f'"{chunk}"' for chunk in chunks)


class DnsZone:
    """dnsmasq answering for the records added here, and NXDOMAIN/NODATA for anything else
    (`local=/#/`: nothing is forwarded to the internet).

        with DnsZone(tmp_path) as zone:
            zone.mx("example.net", "mx.example.net", 10)
            zone.a("mx.example.net", "127.0.0.5")
            app.config["DNS_RESOLVER"] = zone.resolver

    Records added after the start take effect on `reload()` (dnsmasq rereads its
    configuration only on a restart; the port stays the same)."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        require_dnsmasq()
        self.directory = directory / "dnszone"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = _free_port(host)
        self.lines: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def resolver(self) -> str:
        """The DNS_RESOLVER setting for this server: "host:port"."""
        return f"{self.host}:{self.port}"

    # Records -------------------------------------------------------------------------------

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self.lines.append(f"mx-host={name},{host},{preference}")

    def a(self, name: str, address: str) -> None:
        self.lines.append(f"host-record={name},{address}")

    def txt(self, name: str, text: str) -> None:
        self.lines.append(f"txt-record={name},{_quoted(text)}")

    def cname(self, name: str, target: str) -> None:
        self.lines.append(f"cname={name},{target}")

    def srv(self, name: str, target: str, port: int, priority: int = 0, weight: int = 0) -> None:
        self.lines.append(f"srv-host={name},{target},{port},{priority},{weight}")

    # Process -------------------------------------------------------------------------------

    def _write_config(self) -> Path:
        config = self.directory / "dnsmasq.conf"
        base = [
            f"port={self.port}",
            f"listen-address={self.host}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "local=/#/",  # authoritative for everything: never forward a query
            "user=root" if os.geteuid() == 0 else "",
        ]
        config.write_text("\n".join(line for line in base + self.lines if line) + "\n")
        return config

    def start(self) -> DnsZone:
        config = self._write_config()
        self.process = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", f"--conf-file={config}", "--pid-file="],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_until(self._answers, timeout=10):
            self.stop()
            raise RuntimeError(f"dnsmasq did not answer on {self.resolver}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            error = self.process.stderr.read().decode() if self.process.stderr else ""
            raise RuntimeError(f"dnsmasq exited: {error.strip()}")
        query = dns.message.make_query("probe.invalid.", dns.rdatatype.A)
        try:
            dns.query.udp(query, self.host, port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def reload(self) -> None:
        """Restart with the records as they are now (same port)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> DnsZone:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
