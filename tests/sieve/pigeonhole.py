"""Runs Pigeonhole's sieve-test on a script and a message and normalizes its action list."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provider.sieve.interpreter import flatten, normalize_flags

SIEVE_TEST = "/usr/bin/sieve-test"
TIMEOUT_SECONDS = 20

# sieve-test drops privileges to mail_uid (root is refused), so everything it reads must be
# readable by nobody. vacation-seconds and special-use are off by default in Pigeonhole.
# Included scripts: corpus/include/personal/NAME.sieve and corpus/include/global/NAME.sieve,
# copied to sieve_dir and sieve_global (our side reads them through include_loader()).
INCLUDE_DIR = Path(__file__).parent / "corpus" / "include"
_CONFIG = """\
mail_uid = nobody
mail_gid = nogroup
mail_location = mbox:{work}/mail:INBOX={work}/mail/inbox
base_dir = {work}/run
log_path = /dev/stderr
plugin {{
  sieve_extensions = +vacation-seconds +special-use
  sieve_dir = {work}/sieve
  sieve_global = {work}/global
}}
"""


def unavailable_reason() -> str | None:
    """Why the differential tests cannot run here, or None."""
    if not os.path.exists(SIEVE_TEST):
        return f"{SIEVE_TEST} is missing (Debian package dovecot-sieve)"
    return None


@dataclass
class PigeonholeRun:
    """One sieve-test run: its normalized actions, and the raw output for failure messages."""

    normalized: list[str]
    output: str


class SieveTest:
    """A work folder with a sieve-test configuration; run() checks one script on one message."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="sieve-test-"))
        self.work.chmod(0o755)
        for name in ("mail", "run"):
            (self.work / name).mkdir(mode=0o777)
            (self.work / name).chmod(0o777)
        for location, folder in (("personal", "sieve"), ("global", "global")):
            target = self.work / folder
            target.mkdir(mode=0o755)
            target.chmod(0o755)
            for source in sorted((INCLUDE_DIR / location).glob("*.sieve")):
                (target / source.name).write_bytes(source.read_bytes())
                (target / source.name).chmod(0o644)
        config = self.work / "dovecot.conf"
        config.write_text(_CONFIG.format(work=self.work))
        config.chmod(0o644)
        self.counter = 0

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self, script: bytes, message: bytes, sender: str, recipient: str) -> PigeonholeRun:
        self.counter += 1
        script_path = self.work / f"s{self.counter}.sieve"
        message_path = self.work / f"m{self.counter}.eml"
        script_path.write_bytes(script)
        message_path.write_bytes(message)
        script_path.chmod(0o644)
        message_path.chmod(0o644)
        command = [SIEVE_TEST, "-c", str(self.work / "dovecot.conf")]
        command += ["-f", sender, "-a", recipient, "-r", recipient]
        command += [str(script_path), str(message_path)]
        completed = subprocess.run(
            command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False
        )
        output = completed.stdout.decode("utf-8", "replace")
        errors = completed.stderr.decode("utf-8", "replace")
        text = output + errors
        script_path.unlink()
        message_path.unlink()
        if "failed to compile sieve script" in errors:
            return PigeonholeRun(["compile-error"], text)
        if completed.returncode != 0:
            return PigeonholeRun(["error"], text)
        return PigeonholeRun(parse_output(output), text)


def include_loader(location: str, name: str) -> bytes | None:
    """Our side of the corpus' includes: the same files sieve-test reads."""
    path = INCLUDE_DIR / location / f"{name}.sieve"
    return path.read_bytes() if path.is_file() else None


def parse_output(output: str) -> list[str]:
    """sieve-test's 'Performed actions' and 'Implicit keep' sections in our normalized form."""
    lines = output.splitlines()
    result: list[str] = []
    section = ""
    current: dict[str, object] | None = None
    implicit: dict[str, object] | None = None
    in_message = False
    message_lines: list[str] = []
    last_key = ""

    def finish() -> None:
        nonlocal current
        if current is not None:
            result.append(_render(current))
            current = None

    for line in lines:
        if in_message:
            if line == "END MESSAGE":
                in_message = False
                assert current is not None
                current["reason"] = "\n".join(message_lines)
            else:
                message_lines.append(line)
            continue
        if line.startswith("Performed actions:"):
            section = "performed"
            continue
        if line.startswith("Implicit keep:"):
            finish()
            section = "implicit"
            continue
        if not section:
            continue
        stripped = line.strip()
        if line.startswith(" * "):
            item = line[3:]
            if section == "implicit":
                implicit = {"kind": "store", "folder": item.split(": ", 1)[1], "flags": []}
                continue
            finish()
            if item.startswith("store message in folder: "):
                current = {"kind": "store", "folder": item.split(": ", 1)[1], "flags": []}
            elif item.startswith("redirect message to: "):
                current = {"kind": "redirect", "address": item.split(": ", 1)[1].strip("<>")}
            elif item == "discard":
                current = {"kind": "discard"}
            elif item.startswith("reject message with reason: "):
                current = {"kind": "reject", "text": item.split(": ", 1)[1]}
            elif item.startswith("send vacation message:"):
                current = {
                    "kind": "vacation",
                    "seconds": "",
                    "subject": "",
                    "from": "",
                    "handle": "",
                }
                last_key = ""
            else:
                current = {"kind": "unknown", "text": item}
            continue
        if stripped.startswith("+ add IMAP flags: "):
            target = implicit if section == "implicit" else current
            assert target is not None
            target["flags"] = stripped.split(": ", 1)[1].split()
        elif stripped.startswith("+ use mailbox with special-use flag `") and current is not None:
            current["specialuse"] = stripped.split("`", 1)[1].split("'", 1)[0]
        elif stripped == "+ create mailbox if it does not exist" and current is not None:
            current["create"] = True
        elif stripped.startswith("=> ") and current is not None:
            key, _, value = stripped[3:].partition(":")
            last_key = key.strip()
            current[last_key] = value.strip()
        elif line == "START MESSAGE":
            in_message = True
            message_lines = []
        elif current is not None and current["kind"] == "vacation" and last_key and line:
            # A value with line breaks (a multi-line handle) goes on below its "=>" line.
            current[last_key] = f"{current[last_key]}\n{line}"
        elif (
            current is not None
            and current["kind"] == "reject"
            and line
            and not stripped.startswith("+")
        ):
            current["text"] = f"{current['text']}\n{line}"
    finish()
    if implicit is not None:
        line = "implicit-keep store INBOX"
        flags = implicit["flags"]
        assert isinstance(flags, list)
        if flags:
            line += " flags=" + " ".join(normalize_flags(flags))
        result.append(line)
    else:
        result.append("implicit-keep none")
    return result


def _render(action: dict[str, object]) -> str:
    kind = action["kind"]
    if kind == "store":
        line = f"store {action['folder']}"
        if action.get("specialuse"):
            line += f" specialuse={action['specialuse']}"
        if action.get("create"):
            line += " +create"
        flags = action["flags"]
        assert isinstance(flags, list)
        if flags:
            line += " flags=" + " ".join(normalize_flags(flags))
        return line
    if kind == "redirect":
        return f"redirect {action['address']}"
    if kind == "discard":
        return "discard"
    if kind == "reject":
        return f"reject {action['text']}"
    if kind == "vacation":
        return (
            f"vacation seconds={action['seconds']} subject={action['subject']}"
            f" from={action['from']} handle={flatten(str(action['handle']))}"
            f" reason={str(action.get('reason', ''))!r}"
        )
    return f"unknown {action.get('text')}"
