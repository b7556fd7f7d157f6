"""Benchmark: /api/v1 create-mailbox and list-mailboxes with 100,000 mailboxes, over HTTP.

Fills a database with N mailboxes across D domains (bench/mailbox_list.fill: bulk insert, one
shared password hash), makes a superadmin's write token, starts `provider serve --services web`
on that database (its own processes: gunicorn with WEB_WORKERS workers of 8 threads, one per
core unless --web-workers says otherwise, as in production) and times
requests from C client threads of this process, each on its own keep-alive connection: list
pages (a random page of 50; the search and the domain filter at the end of that list are never
reached by 4 clients x 100 requests), the same depths by cursor (`after=ADDRESS`), a mix of
filters (a third of them substring searches, a third a domain, a third a status or plan, each
on a random page), and mailbox creation (each hashes a new password with the configured
argon2id cost). Prints requests/s and median / p99 latency in milliseconds.

    .venv/bin/python bench/api.py [--mailboxes 100000] [--database-url URL] [--clients 4]
        [--web-workers N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flask_migrate import upgrade
from mailbox_list import fill
from provider_target import private_database, provider_env, provider_process, run_provider
from sqlalchemy import text

from provider import create_app
from provider.extensions import db
from provider.services import admins, tokens
from provider.services.audit import CLI_ACTOR


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(
    port: int,
    secret: str,
    clients: int,
    requests_each: int,
    make: Callable[[int, int], tuple[str, str, bytes | None]],
) -> tuple[float, list[float], int]:
    """C threads, each `requests_each` requests on its own connection; (elapsed, latencies ms,
    failures)."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def client(number: int) -> None:
        nonlocal failures
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        bad = 0
        for index in range(requests_each):
            method, url, body = make(number, index)
            started = time.perf_counter()
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            bad += response.status >= 300
        with lock:
            latencies.extend(mine)
            failures += bad

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--lists", type=int, default=100, help="list requests per client")
    parser.add_argument("--creates", type=int, default=25, help="create requests per client")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--web-workers", type=int, default=0, help="WEB_WORKERS (default 0: one per core)"
    )
    options = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as workdir,
        private_database(options.database_url) as database_url,
    ):
        config = {
            "INSTANCE_DIR": workdir,
            "SECRET_KEY": "bench",
            "API_RATE_LIMIT": "10000000 per minute",
        }
        if database_url:
            config["DATABASE_URL"] = database_url
        env = provider_env(Path(workdir), Path(workdir) / "data", "web")
        env.update({f"PROVIDER_{key}": value for key, value in config.items()})
        env["PROVIDER_WEB_WORKERS"] = str(options.web_workers)
        run_provider(env, "init")
        app = create_app(config)
        with app.app_context():
            upgrade(directory=app.extensions["migrate"].directory)
            started = time.perf_counter()
            fill(options.mailboxes, options.domains)
            # Statistics for the planner, as after any bulk load: without them a deep page is
            # a sort of the whole table (210 ms instead of 27 ms measured). On PostgreSQL also
            # the visibility map, which its autovacuum sets within a minute of a bulk insert
            # (the insert threshold of PostgreSQL 13+): the state any installation runs in,
            # and what lets a deep page skip rows from the index alone.
            if db.engine.dialect.name == "postgresql":
                db.session.commit()
                with db.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                ) as connection:
                    connection.execute(text("VACUUM ANALYZE"))
            else:
                db.session.execute(text("ANALYZE"))
                db.session.commit()
            print(
                f"filled {options.mailboxes:,} mailboxes in {time.perf_counter() - started:.1f} s"
            )
            first = admins.ensure_first_admin(db.session, "bench@example.com", "bench passphrase!")
            secret = tokens.create_token(
                db.session, first.admin, name="bench", scope="write", actor=CLI_ACTOR
            ).secret
            db.session.commit()
            db.session.remove()

        with app.app_context():
            db.engine.dispose()
        serving = provider_process(env, "web")
        _host, port, _pid = serving.__enter__()
        pages = max(1, options.mailboxes // 50)
        rng = random.Random(7)
        cursor_urls = [
            f"/api/v1/mailboxes?after=user{rng.randrange(0, options.mailboxes):05d}@domain0.test"
            for _ in range(200)
        ]
        list_urls = [
            f"/api/v1/mailboxes?page={rng.randrange(1, pages + 1)}" for _ in range(200)
        ] + ["/api/v1/mailboxes?search=user04217", "/api/v1/mailboxes?domain=domain7.test&page=3"]

        filter_urls = []
        for _ in range(200):
            kind = rng.randrange(3)
            if kind == 0:  # substring searches: 1, ~10, ~100, ~1,000 or ~11,000 hits
                needle = rng.choice(
                    (
                        f"user{rng.randrange(0, options.mailboxes):05d}",
                        f"ser{rng.randrange(0, options.mailboxes // 10):04d}",
                        f"{rng.randrange(0, options.mailboxes // 100):03d}",
                        f"domain{rng.randrange(0, options.domains)}.",
                        f"r{rng.randrange(0, 10)}",
                    )
                )
                filter_urls.append(f"/api/v1/mailboxes?search={needle}")
            elif kind == 1:
                domain = f"domain{rng.randrange(0, options.domains)}.test"
                filter_urls.append(f"/api/v1/mailboxes?domain={domain}&page={rng.randrange(1, 21)}")
            else:
                which = rng.choice(("status=suspended", "plan=trial", "status=active&plan=paid"))
                filter_urls.append(f"/api/v1/mailboxes?{which}&page={rng.randrange(1, 200)}")

        def list_request(number: int, index: int) -> tuple[str, str, bytes | None]:
            return "GET", list_urls[(number * 31 + index) % len(list_urls)], None

        def cursor_request(number: int, index: int) -> tuple[str, str, bytes | None]:
            return "GET", cursor_urls[(number * 31 + index) % len(cursor_urls)], None

        def filter_request(number: int, index: int) -> tuple[str, str, bytes | None]:
            return "GET", filter_urls[(number * 31 + index) % len(filter_urls)], None

        def create_request(number: int, index: int) -> tuple[str, str, bytes | None]:
            body = {
                "address": f"new{number}-{index}@domain{index % options.domains}.test",
                "quota_gb": 10,
                "protocols": ["imap"],
                "password": "a long bench passphrase",
            }
            return "POST", "/api/v1/mailboxes", json.dumps(body).encode()

        run(port, secret, 1, 5, list_request)  # warm-up
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"clients: {options.clients}")
        columns = ("requests", 9), ("req/s", 8), ("median ms", 10), ("p99 ms", 8), ("failed", 7)
        print(
            "\n" + f"{'operation':24}" + "".join(f" {title:>{width}}" for title, width in columns)
        )
        for name, make, each in (
            ("list-mailboxes", list_request, options.lists),
            ("list-mailboxes (cursor)", cursor_request, options.lists),
            ("list-mailboxes (filters)", filter_request, options.lists),
            ("create-mailbox", create_request, options.creates),
        ):
            elapsed, latencies, failures = run(port, secret, options.clients, each, make)
            print(
                f"{name:24} {len(latencies):>9} {len(latencies) / elapsed:>8.1f} "
                f"{statistics.median(latencies):>10.1f} {percentile(latencies, 0.99):>8.1f} "
                f"{failures:>7}"
            )
        serving.__exit__(None, None, None)


if __name__ == "__main__":
    main()
