"""Benchmark: the admin mailbox list page (search + one page of 50) with 100,000 mailboxes.

Fills a database with N mailboxes across D domains (bulk insert, one shared password hash),
logs in through the real login form and times GET requests of the list page twice: through
the WSGI app in-process (routing, session, query, template) and over HTTP from a client on
127.0.0.1 to the app served by waitress, as `provider serve` runs it.

    .venv/bin/python bench/mailbox_list.py [--mailboxes 100000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

from flask_migrate import upgrade
from sqlalchemy import insert
from waitress.server import create_server

from provider import create_app
from provider.extensions import db
from provider.models import Domain, Mailbox
from provider.services import admins, auth

GIB = 1024**3
ADMIN_PASSWORD = "benchmark admin passphrase"

SCENARIOS = {
    "first page, sorted by address": "/admin/mailboxes",
    "search 'user04217' (1 hit)": "/admin/mailboxes?q=user04217",
    "search 'domain7.' (~1,000 hits), page 5": "/admin/mailboxes?q=domain7.&page=5",
    "search 'user1' (10,000 hits), sort used desc": (
        "/admin/mailboxes?q=user1&sort=used&order=desc"
    ),
    "no search, page 1000": "/admin/mailboxes?page=1000",
    "no search, sort created desc, page 20": "/admin/mailboxes?sort=created&order=desc&page=20",
}


def fill(mailbox_count: int, domain_count: int) -> None:
    """Bulk-insert domains and mailboxes with varied plans, protocols, usage and ages."""
    rng = random.Random(42)
    now = datetime.now(UTC)
    password_hash = auth.hash_password("a mailbox passphrase")
    db.session.execute(
        insert(Domain),
        [
            {"name": f"domain{d}.test", "signup_enabled": d % 3 == 0, "created_at": now}
            for d in range(domain_count)
        ],
    )
    db.session.commit()
    domain_ids = {d.name: d.id for d in db.session.scalars(db.select(Domain))}
    batch = []
    for i in range(mailbox_count):
        domain = f"domain{i % domain_count}.test"
        quota = rng.choice((8, 10, 25, 50, 100)) * GIB
        protocol = rng.random()
        batch.append(
            {
                "domain_id": domain_ids[domain],
                "local_part": f"user{i:05d}",
                "address": f"user{i:05d}@{domain}",
                "password_hash": password_hash,
                "quota_bytes": quota,
                "used_bytes": int(quota * rng.random() ** 2),
                "imap_enabled": protocol < 0.8,
                "pop3_enabled": protocol >= 0.6,
                "status": "suspended" if rng.random() < 0.02 else "active",
                "plan": "trial" if rng.random() < 0.15 else "paid",
                "created_at": now - timedelta(minutes=rng.randrange(0, 2_000_000)),
                "updated_at": now,
            }
        )
        if len(batch) == 10_000:
            db.session.execute(insert(Mailbox), batch)
            batch.clear()
    if batch:
        db.session.execute(insert(Mailbox), batch)
    db.session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30, help="requests per scenario")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        config = {
            "INSTANCE_DIR": workdir,
            "SECRET_KEY": "bench",
            "WTF_CSRF_ENABLED": False,
        }
        if options.database_url:
            config["DATABASE_URL"] = options.database_url
        app = create_app(config)
        with app.app_context():
            upgrade(directory=app.extensions["migrate"].directory)
            started = time.perf_counter()
            fill(options.mailboxes, options.domains)
            elapsed = time.perf_counter() - started
            print(f"filled {options.mailboxes:,} mailboxes in {elapsed:.1f} s")
            admins.ensure_first_admin(db.session, "bench@example.com", ADMIN_PASSWORD)
            db.session.commit()
            db.session.remove()

        client = app.test_client()
        response = client.post(
            "/admin/login", data={"email": "bench@example.com", "password": ADMIN_PASSWORD}
        )
        assert response.status_code == 302, response.status_code

        cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
        assert cookie is not None
        server = create_server(app, host="127.0.0.1", port=0, threads=4)
        threading.Thread(target=server.run, daemon=True).start()
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        headers = {"Cookie": f"{cookie.key}={cookie.value}"}

        def over_http(url: str) -> int:
            connection.request("GET", url, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status

        def in_process(url: str) -> int:
            return client.get(url).status_code

        print(f"\n{'scenario':48} {'in-process median/p95 ms':>25} {'HTTP median/p95 ms':>20}")
        for name, url in SCENARIOS.items():
            figures = []
            for fetch in (in_process, over_http):
                fetch(url)  # warm caches, as a second look at the page would
                samples = []
                for _ in range(options.repeat):
                    started = time.perf_counter()
                    status = fetch(url)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert status == 200, (url, status)
                samples.sort()
                p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
                figures.append(f"{statistics.median(samples):.1f} / {p95:.1f}")
            print(f"{name:48} {figures[0]:>25} {figures[1]:>20}")
        connection.close()
        server.close()

        with app.app_context():
            if options.database_url:
                for table in reversed(db.metadata.sorted_tables):
                    db.session.execute(table.delete())
                db.session.commit()
            db.engine.dispose()


if __name__ == "__main__":
    main()
