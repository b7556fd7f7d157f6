"""Real ManageSieve clients against the server: sieve-connect (Perl) and sievelib (Python),
both over STARTTLS with the development certificate verified as their CA."""

from __future__ import annotations

import functools
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from provider.services import sieve_scripts
from provider.services.storage import mail_store
from provider.tls import certificate_paths
from tests.conftest import MAILBOX_PASSWORD
from tests.protocols.managesieve.conftest import ADDRESS

RULES = (
    'require ["fileinto", "imap4flags"];\n'
    'if header :contains "List-Id" "lists.example.org" {\n'
    '  addflag "\\\\Seen";\n  fileinto "Lists";\n  stop;\n}\n'
)
SIEVE_CONNECT = shutil.which("sieve-connect")


def sieve_connect(app, address, *arguments: str) -> subprocess.CompletedProcess[str]:
    """sieve-connect with the password on a file descriptor, the cert as its CA."""
    cert, _ = certificate_paths(app.config)
    read, write = os.pipe()
    os.write(write, MAILBOX_PASSWORD.encode() + b"\n")
    os.close(write)
    try:
        return subprocess.run(
            [
                SIEVE_CONNECT,
                "--server",
                address[0],
                "--port",
                str(address[1]),
                "--user",
                ADDRESS,
                "--authmech",
                "PLAIN",
                "--passwordfd",
                str(read),
                "--tlscafile",
                str(cert),
                *arguments,
            ],
            pass_fds=(read,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(read)


@pytest.mark.skipif(
    SIEVE_CONNECT is None and not os.environ.get("PROVIDER_REQUIRE_DOVECOT"),
    reason="sieve-connect is not installed",
)
def test_sieve_connect_uploads_lists_activates_downloads_and_deletes(
    app, sieve_server, mailbox, tmp_path: Path
):
    local = tmp_path / "rules.sieve"
    local.write_text(RULES)

    def run(*arguments: str) -> str:
        done = sieve_connect(app, sieve_server, *arguments)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    run("--localsieve", str(local), "--remotesieve", "rules", "--upload")
    home = sieve_scripts.home_of(mail_store(), ADDRESS)
    assert (home / "sieve" / "rules.sieve").read_text() == RULES
    # sieve-connect prints LISTSCRIPTS' lines as the server sent them.
    assert run("--list").splitlines() == ['"rules"']
    run("--remotesieve", "rules", "--activate")
    assert os.readlink(home / ".dovecot.sieve") == "sieve/rules.sieve"
    assert run("--list").splitlines() == ['"rules" ACTIVE']
    downloaded = tmp_path / "downloaded.sieve"
    run("--localsieve", str(downloaded), "--remotesieve", "rules", "--download")
    assert downloaded.read_text() == RULES
    refused = sieve_connect(app, sieve_server, "--remotesieve", "rules", "--delete")
    assert refused.returncode != 0  # the active script (NO (ACTIVE))
    run("--deactivate")
    run("--remotesieve", "rules", "--delete")
    assert run("--list").splitlines() == []

    broken = tmp_path / "broken.sieve"
    broken.write_text('require ["fileinto"];\nfileinto "X"\n')
    failed = sieve_connect(
        app, sieve_server, "--localsieve", str(broken), "--remotesieve", "b", "--upload"
    )
    assert failed.returncode != 0
    assert "line 3" in failed.stderr + failed.stdout


def test_sievelib_client_does_the_same(app, sieve_server, mailbox, monkeypatch):
    from sievelib import managesieve

    cert, _ = certificate_paths(app.config)
    monkeypatch.setattr(
        managesieve.ssllib,
        "create_default_context",
        functools.partial(ssl.create_default_context, cafile=str(cert)),
    )
    client = managesieve.Client(*sieve_server)
    assert client.connect(ADDRESS, MAILBOX_PASSWORD, starttls=True, authmech="PLAIN")
    assert client.get_implementation() == "provider"
    assert "fileinto" in client.get_sieve_capabilities()
    assert client.havespace("rules", len(RULES))
    assert client.checkscript(RULES)
    assert client.putscript("rules", RULES)
    assert client.putscript("second", "keep;\n")
    assert client.setactive("rules")
    assert client.listscripts() == ("rules", ["second"])
    # sievelib joins the literal's lines without the last line end.
    assert client.getscript("rules") == RULES.rstrip("\n")
    assert client.renamescript("rules", "sorting")
    assert client.listscripts() == ("sorting", ["second"])
    assert not client.deletescript("sorting")
    assert client.errcode == b"ACTIVE"
    assert client.setactive("")
    assert client.deletescript("sorting")
    assert client.listscripts() == (None, ["second"])
    assert not client.putscript("bad", 'require ["fileinto"];\nfileinto "X"\n')
    assert b"line 3" in client.errmsg
    client.logout()
