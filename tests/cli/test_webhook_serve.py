"""Webhooks through the real processes: `provider webhook add` and `provider mailbox add` as
commands, `provider serve --services outbound` posting to a receiver that goes down and back."""

from __future__ import annotations

import json

from tests.cli.test_entrypoint import environment, run, serving
from tests.conftest import wait_until
from tests.webhooks.receiver import Receiver

__all__ = ["environment"]  # the fixture, shared with test_entrypoint
PASSWORD = "a long passphrase"


def add_mailbox(env: dict[str, str], address: str) -> None:
    created = run(
        env,
        *("mailbox", "add", address, "--quota-gb", "8", "--protocols", "imap"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr


def test_the_outbound_process_delivers_events_and_retries_a_receiver_that_was_down(
    environment: dict[str, str],
) -> None:
    environment.update(
        PROVIDER_WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
        PROVIDER_WEBHOOK_POLL_SECONDS="1",
        PROVIDER_WEBHOOK_RETRY_BASE_SECONDS="1",
        PROVIDER_WEBHOOK_RETRY_MAX_SECONDS="2",
        PROVIDER_WEBHOOK_TIMEOUT_SECONDS="2",
    )
    receiver = Receiver().start()
    try:
        assert run(environment, "init").returncode == 0
        assert run(environment, "domain", "add", "example.test").returncode == 0
        added = run(
            environment,
            *("webhook", "add", receiver.url, "--event", "mailbox.created,mailbox.deleted"),
            "--json",
        )
        assert added.returncode == 0, added.stderr
        receiver.secret = json.loads(added.stdout)["secret"]
        with serving(environment, "outbound"):
            add_mailbox(environment, "a@example.test")
            assert wait_until(lambda: len(receiver.accepted) == 1, timeout=20)
            receiver.stop()  # down: connections refused
            add_mailbox(environment, "b@example.test")
            assert run(environment, "mailbox", "delete", "b@example.test").returncode == 0
            assert wait_until(
                lambda: (
                    '"last_error": "ConnectionRefusedError'
                    in run(environment, "webhook", "deliveries", "--json").stdout
                ),
                timeout=20,
            )
            receiver.start(receiver.port)  # back
            assert wait_until(lambda: len(receiver.accepted) == 3, timeout=30)
        assert receiver.bad_signatures == 0
        assert [(r.type, r.data["address"]) for r in receiver.accepted] == [
            ("mailbox.created", "a@example.test"),
            ("mailbox.created", "b@example.test"),
            ("mailbox.deleted", "b@example.test"),
        ]
        listed = json.loads(run(environment, "webhook", "deliveries", "--json").stdout)
        assert {d["state"] for d in listed} == {"delivered"}
        assert max(d["attempts"] for d in listed) >= 2
    finally:
        receiver.stop()
