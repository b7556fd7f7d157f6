"""Several web processes serve as one: WEB_WORKERS gunicorn workers behind `provider serve`
count login failures, API requests and signups together (INSTANCE_DIR/run/logins.sqlite3)."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.cli.test_entrypoint import environment, run
from tests.cli.test_supervisor import ADMIN_EMAIL, ADMIN_PASSWORD, Served, supervised
from tests.conftest import wait_until

__all__ = ["environment"]  # the fixture, shared with test_entrypoint
ATTEMPTS = 24


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (gunicorn's workers under its arbiter)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def web_environment(environment: dict[str, str]) -> dict[str, str]:
    environment.update(
        PROVIDER_WEB_WORKERS="2",
        PROVIDER_COOKIE_SECURE="false",
        PROVIDER_LOGIN_MAX_FAILURES="3",
        PROVIDER_API_RATE_LIMIT="10 per minute",
    )
    assert run(environment, "init").returncode == 0
    return environment


def two_workers(served: Served) -> list[int]:
    [arbiter] = served.pids("web")
    assert wait_until(lambda: len(children_of(arbiter)) == 2, 30)
    return children_of(arbiter)


def post_login(served: Served, password: str) -> int:
    """One admin login on a connection of its own (urllib opens one per request), so the
    kernel hands each to whichever web process accepts first; its status code."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(served.url("/admin/login"), timeout=10) as response:
        form = response.read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    assert token, form
    body = urllib.parse.urlencode(
        {"email": ADMIN_EMAIL, "password": password, "csrf_token": token.group(1)}
    ).encode()
    try:
        with opener.open(served.url("/admin/login"), data=body, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_admin_login_failures_are_counted_across_web_processes(web_environment):
    with supervised(web_environment, "web") as served:
        assert len(two_workers(served)) == 2
        for _ in range(3):
            assert post_login(served, "a wrong passphrase") == 200  # the form, with its error
        # Blocked in both processes: not one of the next attempts is even checked, the right
        # passphrase included (counted per process, about half would get through).
        answers = [post_login(served, ADMIN_PASSWORD) for _ in range(ATTEMPTS)]
        assert answers == [429] * ATTEMPTS


def test_an_api_token_limit_holds_across_web_processes(web_environment):
    made = run(web_environment, "token", "create", "--admin", ADMIN_EMAIL, "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["token"]
    with supervised(web_environment, "web") as served:
        assert len(two_workers(served)) == 2
        codes = []
        for _ in range(ATTEMPTS):
            request = urllib.request.Request(
                served.url("/api/v1/domains"), headers={"Authorization": f"Bearer {secret}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    codes.append(response.status)
            except urllib.error.HTTPError as error:
                codes.append(error.code)
                assert int(error.headers["Retry-After"]) >= 1
        assert codes == [200] * 10 + [429] * (ATTEMPTS - 10)


def test_a_killed_web_worker_is_replaced_and_the_block_outlives_it(web_environment):
    with supervised(web_environment, "web") as served:
        first = two_workers(served)
        for _ in range(3):
            assert post_login(served, "a wrong passphrase") == 200
        os.kill(first[0], signal.SIGKILL)
        [arbiter] = served.pids("web")
        assert wait_until(
            lambda: len(pids := children_of(arbiter)) == 2 and first[0] not in pids, 30
        )
        assert served.pids("web") == [arbiter]  # gunicorn replaced it, not the supervisor
        assert [post_login(served, ADMIN_PASSWORD) for _ in range(8)] == [429] * 8
