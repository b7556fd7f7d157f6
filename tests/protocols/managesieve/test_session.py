"""ManageSieve over a raw socket: every command of RFC 5804 §2 and its errors."""

from __future__ import annotations

import os
from typing import Any

from provider.services import sieve_scripts
from provider.services.mail_access import guards
from provider.services.storage import mail_store
from tests.conftest import wait_until
from tests.protocols.managesieve.conftest import ADDRESS, Client, plain, put

RULES = b'require ["fileinto"];\nif header :contains "Subject" "x" { fileinto "X"; }\n'
OTHER = b"keep;\n"


def home() -> Any:
    return sieve_scripts.home_of(mail_store(), ADDRESS)


def test_greeting_lists_capabilities_and_starttls(sieve_server, app):
    with Client(sieve_server) as client:
        greeting = b"".join(client.greeting)
        assert b'"IMPLEMENTATION" "provider"\r\n' in greeting
        assert b'"SASL" "PLAIN"\r\n' in greeting  # loopback: plaintext allowed, as IMAP
        assert b'"STARTTLS"\r\n' in greeting
        assert b'"VERSION" "1.0"\r\n' in greeting
        sieve = next(line for line in client.greeting if line.startswith(b'"SIEVE"'))
        words = sieve.split(b'"')[3].split()
        assert b"fileinto" in words and b"vacation" in words and b"regex" in words
        assert b"comparator-i;ascii-numeric" in words and b"duplicate" in words
        assert b"include" in words and b"comparator-i;octet" not in words
        assert not any(line.startswith(b'"NOTIFY"') for line in client.greeting)
        assert client.greeting[-1].startswith(b"OK")
        assert client.command("CAPABILITY") == [
            *client.greeting[:-1],
            b'OK "Capability completed"\r\n',
        ]


def test_starttls_repeats_capabilities_without_starttls(sieve_server, mailbox):
    with Client(sieve_server) as client:
        after = client.start_tls()
        assert b'"STARTTLS"\r\n' not in after
        assert b'"SASL" "PLAIN"\r\n' in after
        assert after[-1].startswith(b"OK")
        assert client.command("STARTTLS")[-1].startswith(b"NO")
        client.login()
        assert client.command("LISTSCRIPTS") == [b'OK "Listscripts completed"\r\n']


def test_authenticate_initial_response_and_continuation(sieve_server, mailbox):
    with Client(sieve_server) as client:
        assert client.command("LISTSCRIPTS")[-1].startswith(b"NO")  # not yet logged in
        client.send(b'AUTHENTICATE "PLAIN"\r\n')
        assert client.line() == b'""\r\n'
        response = plain().encode()
        assert client.command(b"{%d+}\r\n" % len(response) + response)[-1] == b'OK "Logged in"\r\n'
        assert client.command('AUTHENTICATE "PLAIN" "x"')[-1].startswith(b"NO")
        assert client.command("UNAUTHENTICATE")[-1].startswith(b"OK")
        assert client.command("LISTSCRIPTS")[-1].startswith(b"NO")
        client.login()
        assert client.command("LOGOUT") == [b'OK "Logout completed"\r\n']
        assert client.closed()


def test_authenticate_cancel_wrong_password_and_unknown_mechanism(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.send(b'AUTHENTICATE "PLAIN"\r\n')
        assert client.line() == b'""\r\n'
        assert client.command('"*"') == [b'NO "Authentication cancelled"\r\n']
        wrong = client.command(f'AUTHENTICATE "PLAIN" "{plain(password="wrong")}"')
        assert wrong == [b'NO "Authentication failed."\r\n']
        unknown = client.command(f'AUTHENTICATE "PLAIN" "{plain(user="nobody@example.test")}"')
        assert unknown == wrong
        assert client.command('AUTHENTICATE "CRAM-MD5"')[-1].startswith(b"NO")
        assert client.command('AUTHENTICATE "PLAIN" "!!!"')[-1].startswith(b"NO")


def test_put_list_get_activate_rename_delete(sieve_server, mailbox):
    with Client(sieve_server) as client:
        client.login()
        assert client.command(put("rules", RULES)) == [b'OK "Putscript completed"\r\n']
        # A synchronizing literal is taken too (no continuation in ManageSieve).
        sync = b'PUTSCRIPT "other" {%d}\r\n' % len(OTHER) + OTHER
        assert client.command(sync)[-1].startswith(b"OK")
        assert client.command("LISTSCRIPTS") == [
            b'"other"\r\n',
            b'"rules"\r\n',
            b'OK "Listscripts completed"\r\n',
        ]
        assert client.command('SETACTIVE "rules"')[-1].startswith(b"OK")
        assert os.readlink(home() / ".dovecot.sieve") == "sieve/rules.sieve"
        assert client.command("LISTSCRIPTS")[1] == b'"rules" ACTIVE\r\n'
        got = client.command('GETSCRIPT "rules"')
        assert got[0] == b"{%d}\r\n" % len(RULES) + RULES + b"\r\n"
        assert got[-1].startswith(b"OK")
        assert client.command('GETSCRIPT "none"')[-1].startswith(b"NO (NONEXISTENT)")
        assert client.command('DELETESCRIPT "rules"')[-1].startswith(b"NO (ACTIVE)")
        assert client.command('RENAMESCRIPT "rules" "other"')[-1].startswith(b"NO (ALREADYEXISTS)")
        assert client.command('RENAMESCRIPT "none" "x"')[-1].startswith(b"NO (NONEXISTENT)")
        assert client.command('RENAMESCRIPT "rules" "sorting"')[-1].startswith(b"OK")
        assert os.readlink(home() / ".dovecot.sieve") == "sieve/sorting.sieve"
        assert (home() / "sieve" / "sorting.sieve").read_bytes() == RULES
        assert not (home() / "sieve" / "rules.sieve").exists()
        assert client.command("LISTSCRIPTS")[1] == b'"sorting" ACTIVE\r\n'
        assert client.command('SETACTIVE ""')[-1].startswith(b"OK")
        assert not os.path.lexists(home() / ".dovecot.sieve")
        assert client.command('SETACTIVE "none"')[-1].startswith(b"NO (NONEXISTENT)")
        assert client.command('DELETESCRIPT "sorting"')[-1].startswith(b"OK")
        assert client.command('DELETESCRIPT "sorting"')[-1].startswith(b"NO (NONEXISTENT)")
        assert client.command("LISTSCRIPTS") == [b'"other"\r\n', b'OK "Listscripts completed"\r\n']


def test_errors_carry_line_and_column(sieve_server, mailbox):
    broken = b'require ["fileinto"];\nif header :contains "Subject" "x" {\n  fileinto "X"\n}\n'
    with Client(sieve_server) as client:
        client.login()
        refused = client.command(put("broken", broken))[-1]
        assert refused.startswith(b'NO "line 4, column 1: error: '), refused
        checked = client.command(b"CHECKSCRIPT {%d+}\r\n" % len(broken) + broken)[-1]
        assert checked == refused
        assert client.command(b"CHECKSCRIPT {%d+}\r\n" % len(RULES) + RULES)[-1].startswith(b"OK")
        unknown = b'require ["nonesuch"];\n'
        assert b"nonesuch" in client.command(put("x", unknown))[-1]
        assert client.command("LISTSCRIPTS") == [b'OK "Listscripts completed"\r\n']


MAIN = b'require ["include"];\ninclude "lists";\n'
LISTS = b'require "fileinto";\nfileinto "Lists";\n'


def test_include_of_a_script_not_there_yet_warns_at_upload_and_blocks_activation(
    sieve_server, mailbox
):
    """Pigeonhole's rule: an uploaded script may include one that does not exist yet (OK
    with WARNINGS); it cannot be made active until it does."""
    with Client(sieve_server) as client:
        client.login()
        stored = client.command(put("main", MAIN))[-1]
        assert stored.startswith(b'OK (WARNINGS) "line 2: warning: included personal script'), (
            stored
        )
        checked = client.command(b"CHECKSCRIPT {%d+}\r\n" % len(MAIN) + MAIN)[-1]
        assert checked.startswith(b"OK (WARNINGS)") and b"'lists'" in checked
        refused = client.command('SETACTIVE "main"')[-1]
        assert refused.startswith(b"NO") and b"'lists' does not exist" in refused
        assert not os.path.lexists(home() / ".dovecot.sieve")
        assert client.command(put("lists", LISTS)) == [b'OK "Putscript completed"\r\n']
        assert client.command('SETACTIVE "main"')[-1].startswith(b"OK")
        # An included script with an error is the including script's error, at its line.
        broken = b'require "include";\n\ninclude "bad";\n'
        assert client.command(put("bad", b"if {"))[-1].startswith(b"NO")
        (home() / "sieve" / "bad.sieve").write_bytes(b"if {")  # edited by hand, broken
        refused = client.command(put("top", broken))[-1]
        assert refused.startswith(b'NO "line 3, column 1: error: in included personal script')


def test_havespace_and_quota_codes(sieve_server, app, mailbox):
    app.config.update(SIEVE_MAX_SCRIPT_BYTES=100, SIEVE_MAX_SCRIPTS=2)
    with Client(sieve_server) as client:
        client.login()
        assert client.command('HAVESPACE "a" 100')[-1].startswith(b"OK")
        assert client.command('HAVESPACE "a" 101')[-1].startswith(b"NO (QUOTA/MAXSIZE)")
        assert client.command('HAVESPACE "a" 99999999999')[-1].startswith(b"NO")
        assert client.command(put("a", OTHER))[-1].startswith(b"OK")
        assert client.command(put("b", OTHER))[-1].startswith(b"OK")
        assert client.command('HAVESPACE "c" 10')[-1].startswith(b"NO (QUOTA/MAXSCRIPTS)")
        assert client.command('HAVESPACE "a" 10')[-1].startswith(b"OK")  # a replacement
        assert client.command(put("c", OTHER))[-1].startswith(b"NO (QUOTA/MAXSCRIPTS)")
        assert client.command(put("a", b"#" * 101))[-1].startswith(b"NO (QUOTA/MAXSIZE)")


def test_noop_with_tag_and_unknown_commands(sieve_server, mailbox):
    with Client(sieve_server) as client:
        assert client.command("NOOP") == [b'OK "Done"\r\n']
        assert client.command('NOOP "STARTTLS-SYNC-42"') == [
            b'OK (TAG "STARTTLS-SYNC-42") "Done"\r\n'
        ]
        assert client.command("FROB")[-1].startswith(b"NO")
        assert client.command("NOOP 1 2")[-1].startswith(b"NO")


def test_pop3_only_mailbox_may_not_store_sorting_rules(sieve_server, session):
    from tests.conftest import make_mailbox

    make_mailbox(session, ADDRESS, protocols="pop3")
    with Client(sieve_server) as client:
        client.login()
        refused = client.command(put("rules", RULES))[-1]
        assert refused.startswith(b"NO") and b"need IMAP" in refused
        assert client.command(put("forward", b'redirect "a@b.test";\n'))[-1].startswith(b"OK")
        # Sorting brought in through include is sorting too.
        assert client.command(put("lists", LISTS))[-1].startswith(b"NO")
        (home() / "sieve").mkdir(exist_ok=True)
        (home() / "sieve" / "lists.sieve").write_bytes(LISTS)
        refused = client.command(put("main", MAIN))[-1]
        assert refused.startswith(b"NO") and b"need IMAP" in refused


def test_logins_per_user_and_address_are_limited_by_the_shared_guards(app, mailbox, sieve_server):
    """MANAGESIEVE_MAX_CONNECTIONS_PER_USER_IP: the table is the one in mail_access.Guards, as
    for IMAP, POP3 and submission; a session that ends frees its slot."""
    guards(app).managesieve_connections.limit = 1
    with Client(sieve_server) as first, Client(sieve_server) as second:
        first.login()
        refused = second.command(f'AUTHENTICATE "PLAIN" "{plain()}"')[-1]
        assert refused.startswith(b"NO (TRYLATER)"), refused
        assert first.command("LOGOUT")[-1].startswith(b"OK")

        def second_logs_in() -> bool:
            return second.command(f'AUTHENTICATE "PLAIN" "{plain()}"')[-1].startswith(b"OK")

        assert wait_until(second_logs_in, 5)
