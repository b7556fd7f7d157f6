"""IMAP fixtures: both IMAP listeners on port 0, settings that keep tests fast."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from provider.protocols.server import ProtocolRunner


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(IMAP_PORT=0, IMAPS_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


@pytest.fixture
def imap(app: Flask) -> Iterator[dict[str, tuple[str, int]]]:
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()
