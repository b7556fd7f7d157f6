"""/healthz and the dashboard read the states `provider serve`'s supervisor writes: each service
named with its state and restarts; a service that is down named as such; superadmins only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import login
from tests.web.conftest import DOMAIN_ADMIN_EMAIL, text_of


def service(name: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    record = {"name": name, "label": name, "state": state, "pids": [4242], "restarts": 0}
    record.update(last_restart_at=None, last_exit=None)
    record.update(extra)
    return record


@pytest.fixture
def status_file(app: Flask, tmp_path: Path) -> Path:
    path = tmp_path / "serve-1.json"
    app.config["SERVICE_STATUS_FILE"] = str(path)
    return path


def write(path: Path, *services: dict[str, Any]) -> None:
    path.write_text(json.dumps({"supervisor_pid": 1, "services": list(services)}))


def test_healthz_outside_serve_is_just_ok(client: FlaskClient):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.data == b"ok\n"


def test_healthz_names_each_service_and_its_restarts(client: FlaskClient, status_file: Path):
    write(
        status_file,
        service("web"),
        service(
            "mail",
            label="mail (imap, pop3)",
            restarts=2,
            last_restart_at="2026-12-06T09:55:12+00:00",
            last_exit="killed by SIGKILL",
        ),
    )
    response = client.get("/healthz")
    assert response.status_code == 200
    assert text_of(response).splitlines() == [
        "ok",
        "web: running",
        "mail: running, restarted 2 times, last at 2026-12-06 09:55:12 UTC (killed by SIGKILL)",
    ]


def test_healthz_names_a_service_that_is_down(client: FlaskClient, status_file: Path):
    """The contract's `ok` and 200 stay (the database answers); the line says what is down."""
    write(status_file, service("web"), service("mail", "restarting", pids=[]))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert text_of(response).splitlines() == ["ok", "web: running", "mail: restarting"]


def test_an_unreadable_status_file_leaves_healthz_answering(client: FlaskClient, status_file: Path):
    status_file.write_text("{not json")
    assert client.get("/healthz").data == b"ok\n"


def test_the_dashboard_shows_services_to_superadmins_only(
    app: Flask, logged_in: FlaskClient, domain_admin: Any, status_file: Path
):
    write(
        status_file,
        service("web"),
        service("mail", restarts=1, last_restart_at="2026-12-06T09:55:12+00:00"),
    )
    page = text_of(logged_in.get("/admin/"))
    assert 'data-key="mail" data-state="running" data-restarts="1"' in page
    assert "running, restarted 1 time, last at 2026-12-06 09:55:12 UTC" in page

    other = app.test_client()
    assert login(other, DOMAIN_ADMIN_EMAIL).status_code == 302
    assert 'id="stat-services"' not in text_of(other.get("/admin/"))
