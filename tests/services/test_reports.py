"""Read-only reports: dashboard numbers, paged mailbox and alias lists, audit pages, diffs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.extensions import db
from provider.models import Domain, Mailbox
from provider.services import audit, provisioning, reports
from provider.services.audit import Actor
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox

GIB = 1024**3


def bulk(session: Session, domain: Domain, count: int, **columns: Any) -> None:
    """Insert `count` mailboxes without hashing passwords (reports never read them)."""
    rows = []
    for number in range(count):
        row = {
            "domain_id": domain.id,
            "local_part": f"u{number:03d}",
            "address": f"u{number:03d}@{domain.name}",
            "password_hash": "{PLAIN}unused",
            "quota_bytes": 8 * GIB,
            "used_bytes": 0,
            "imap_enabled": True,
            "pop3_enabled": False,
            "status": "active",
            "plan": "paid",
            "created_at": domain.created_at,
            "updated_at": domain.created_at,
        }
        row.update(
            {key: value(number) if callable(value) else value for key, value in columns.items()}
        )
        rows.append(row)
    session.execute(insert(Mailbox), rows)
    session.commit()


def test_dashboard_stats_count_everything_for_a_superadmin(session: Session):
    one = make_domain(session, "one.test")
    two = make_domain(session, "two.test")
    bulk(session, one, 3, plan=lambda n: "trial" if n == 0 else "paid", used_bytes=GIB)
    bulk(
        session,
        two,
        2,
        imap_enabled=lambda n: n == 1,
        pop3_enabled=True,
        status=lambda n: ["suspended", "expired"][n],
        quota_bytes=100 * GIB,
    )
    stats = reports.dashboard_stats(session)
    assert stats.domains == 2 and stats.mailboxes == 5
    assert stats.by_plan == {"trial": 1, "paid": 4}
    assert stats.by_protocols == {"imap": 3, "pop3": 1, "both": 1}
    assert stats.by_status == {"active": 3, "suspended": 1, "expired": 1}
    assert stats.quota_bytes == 3 * 8 * GIB + 2 * 100 * GIB
    assert stats.used_bytes == 3 * GIB
    assert stats.used_ratio == pytest.approx(3 / 224)


def test_dashboard_stats_limited_to_domains(session: Session):
    one = make_domain(session, "one.test")
    two = make_domain(session, "two.test")
    bulk(session, one, 3)
    bulk(session, two, 2)
    limited = reports.dashboard_stats(session, {two.id})
    assert (limited.domains, limited.mailboxes) == (1, 2)
    nothing = reports.dashboard_stats(session, set())
    assert (nothing.domains, nothing.mailboxes, nothing.quota_bytes) == (0, 0, 0)
    assert nothing.by_plan == {"trial": 0, "paid": 0}


def test_list_mailboxes_pages_with_totals(session: Session):
    bulk(session, make_domain(session, "one.test"), 12)
    page = reports.list_mailboxes(session, per_page=5, page=3)
    assert [m.address for m in page.items] == ["u010@one.test", "u011@one.test"]
    assert (page.total, page.page, page.pages) == (12, 3, 3)
    assert page.has_prev and not page.has_next
    assert (page.first, page.last) == (11, 12)
    clamped = reports.list_mailboxes(session, per_page=5, page=100)
    assert clamped.page == 3
    assert reports.list_mailboxes(session, per_page=5, page=-4).page == 1


def test_list_mailboxes_search_is_literal_and_case_insensitive(session: Session):
    domain = make_domain(session, "one.test")
    bulk(session, domain, 3)
    assert [m.address for m in reports.list_mailboxes(session, search=" U001 ").items] == [
        "u001@one.test"
    ]
    # LIKE wildcards in the search are plain characters.
    assert reports.list_mailboxes(session, search="u_0").total == 0
    assert reports.list_mailboxes(session, search="%").total == 0


def test_list_mailboxes_filters_by_domain_ids(session: Session):
    one = make_domain(session, "one.test")
    two = make_domain(session, "two.test")
    bulk(session, one, 2)
    bulk(session, two, 3)
    assert reports.list_mailboxes(session, domain_ids={two.id}).total == 3
    assert reports.list_mailboxes(session, domain_ids={one.id, two.id}).total == 5
    empty = reports.list_mailboxes(session, domain_ids=set())
    assert (empty.items, empty.total, empty.pages) == ([], 0, 1)


def test_list_mailboxes_sorts_with_a_stable_tie_break(session: Session):
    bulk(session, make_domain(session, "one.test"), 6, used_bytes=lambda n: n % 2)
    ascending = reports.list_mailboxes(session, sort="used")
    assert [m.address[:4] for m in ascending.items] == [
        "u000",
        "u002",
        "u004",
        "u001",
        "u003",
        "u005",
    ]
    descending = reports.list_mailboxes(session, sort="used", descending=True)
    assert [m.address[:4] for m in descending.items] == list(
        reversed([m.address[:4] for m in ascending.items])
    )
    with pytest.raises(InvalidInput):
        reports.list_mailboxes(session, sort="password_hash")


def test_list_mailboxes_loads_domain_and_aliases_in_a_fixed_number_of_queries(
    session: Session,
):
    domain = make_domain(session, "one.test")
    bulk(session, domain, 30)
    owner = session.scalars(select(Mailbox).order_by(Mailbox.id).limit(1)).one()
    provisioning.create_alias(session, "extra@one.test", owner, actor=TEST_ACTOR)
    session.commit()
    session.expire_all()
    statements: list[str] = []

    def count_statement(*args: Any) -> None:
        statements.append(args[2])

    engine = db.engine
    event.listen(engine, "before_cursor_execute", count_statement)
    try:
        page = reports.list_mailboxes(session, per_page=25)
        rendered = [(m.domain.name, len(m.aliases)) for m in page.items]
    finally:
        event.remove(engine, "before_cursor_execute", count_statement)
    assert len(rendered) == 25
    # COUNT, the page, its domains, its aliases: no query per row.
    assert len(statements) == 4, statements


def test_list_aliases_searches_alias_or_mailbox_and_respects_scope(session: Session):
    rosa = make_mailbox(session, "rosa@one.test")
    sam = make_mailbox(session, "sam@two.test")
    provisioning.create_alias(session, "sales@one.test", rosa, actor=TEST_ACTOR)
    provisioning.create_alias(session, "help@two.test", sam, actor=TEST_ACTOR)
    session.commit()
    assert [a.address for a in reports.list_aliases(session).items] == [
        "help@two.test",
        "sales@one.test",
    ]
    assert [a.address for a in reports.list_aliases(session, search="rosa").items] == [
        "sales@one.test"
    ]
    scoped = reports.list_aliases(session, domain_ids={sam.domain_id})
    assert [a.address for a in scoped.items] == ["help@two.test"]
    assert reports.list_aliases(session, domain_ids=set()).total == 0


def test_domain_summaries_count_mailboxes_and_aliases(session: Session):
    rosa = make_mailbox(session, "rosa@one.test")
    make_mailbox(session, "tom@one.test")
    make_domain(session, "empty.test")
    provisioning.create_alias(session, "sales@one.test", rosa, actor=TEST_ACTOR)
    session.commit()
    summaries = {s.domain.name: (s.mailboxes, s.aliases) for s in reports.domain_summaries(session)}
    assert summaries == {"empty.test": (0, 0), "one.test": (2, 1)}
    assert reports.domain_summaries(session, set()) == []


def test_list_audit_events_pages_newest_first(session: Session):
    for number in range(7):
        audit.record(
            session, Actor("cli"), "domain.update", f"d{number}.test", domain=f"d{number}.test"
        )
    session.commit()
    page = reports.list_audit_events(session, per_page=3)
    assert page.total == 7 and page.pages == 3
    assert [e.target for e in page.items] == ["d6.test", "d5.test", "d4.test"]
    scoped = reports.list_audit_events(session, domains={"d1.test", "d2.test"})
    assert [e.target for e in scoped.items] == ["d2.test", "d1.test"]


def test_changed_fields_lists_only_differing_keys():
    changes = reports.changed_fields({"a": 1, "b": 2, "c": [1]}, {"a": 1, "b": 3, "d": True})
    assert [(c.key, c.before, c.after) for c in changes] == [
        ("b", 2, 3),
        ("c", [1], None),
        ("d", None, True),
    ]
    assert [c.key for c in reports.changed_fields(None, {"x": 1})] == ["x"]
    assert reports.changed_fields({"x": 1}, {"x": 1}) == []
    # Empty values are "nothing" whichever form they take.
    assert reports.changed_fields(None, {"aliases": [], "contact": None, "note": ""}) == []
    assert [c.key for c in reports.changed_fields({"n": 0}, {"n": None})] == ["n"]


def on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def test_totals_past_the_exact_cap_are_flagged_estimates_never_below_what_is_known(
    app: Any, session: Session
):
    app.config["LIST_EXACT_TOTAL_MAX"] = 5
    bulk(session, make_domain(session, "one.test"), 23)
    first = reports.list_mailboxes(session, per_page=4)
    assert [m.address for m in first.items] == [f"u{n:03d}@one.test" for n in range(4)]
    if on_postgresql(session):
        # More than 5 match: the planner's guess, but at least the 5 + 1 the COUNT saw.
        assert first.total_is_estimate and first.total >= 6 and first.has_next
    else:  # SQLite has no estimate and counts quickly: always exact
        assert (first.total, first.total_is_estimate) == (23, False)
    # Deep enough that the 5 counted say nothing: at least this page and one more row.
    fifth = reports.list_mailboxes(session, per_page=4, page=5)
    assert fifth.items[0].address == "u016@one.test"
    assert fifth.total >= 21 and fifth.has_next
    # The short last page makes the total exact.
    last = reports.list_mailboxes(session, per_page=4, page=6)
    assert [m.address for m in last.items] == ["u020@one.test", "u021@one.test", "u022@one.test"]
    assert (last.total, last.total_is_estimate, last.pages, last.has_next) == (23, False, 6, False)
    # A page past the end (a stale link, or an estimate too high) shows the last page, exact.
    past = reports.list_mailboxes(session, per_page=4, page=1000)
    assert (past.page, past.total, past.total_is_estimate, len(past.items)) == (6, 23, False, 3)
    # Up to the cap every total is exact, on either database.
    three = reports.list_mailboxes(session, search="u02", per_page=2)
    assert (three.total, three.total_is_estimate, three.pages) == (3, False, 2)
    app.config["LIST_EXACT_TOTAL_MAX"] = 0  # 0: always exact
    exact = reports.list_mailboxes(session, per_page=4)
    assert (exact.total, exact.total_is_estimate) == (23, False)


def test_estimated_counts_bind_every_filter_as_a_parameter(session: Session):
    """The estimate EXPLAINs the list's own select: LIKE text with quotes, backslashes and
    wildcards, and an IN list of domains, go as parameters (no SQL made from them)."""
    one = make_domain(session, "one.test")
    two = make_domain(session, "two.test")
    weird = "o'b\\%_"
    for domain in (one, two):
        bulk(session, domain, 4, address=lambda n, d=domain: f"{weird}{n}@{d.name}")
    query = reports.mailbox_select(search=weird, domain_ids={one.id, two.id}, status="active")
    total, estimated = reports.count_matching(session, query, exact_up_to=3)
    if on_postgresql(session):
        assert estimated and total >= 4
    else:
        assert (total, estimated) == (8, False)
    assert reports.count_matching(session, query, exact_up_to=8) == (8, False)
    assert reports.list_mailboxes(session, search=weird).total == 8
    assert reports.list_mailboxes(session, search="o'b\\%x").total == 0


def test_keyset_pages_carry_the_same_total(app: Any, session: Session):
    app.config["LIST_EXACT_TOTAL_MAX"] = 5
    bulk(session, make_domain(session, "one.test"), 9)
    page = reports.mailboxes_after(session, "", per_page=4)
    assert [m.address for m in page.items][-1] == "u003@one.test"
    assert page.next_after == "u003@one.test"
    assert page.total_is_estimate == on_postgresql(session)
    assert page.total >= 6 if on_postgresql(session) else page.total == 9
    last = reports.mailboxes_after(session, "u007@one.test", per_page=4)
    assert ([m.address for m in last.items], last.next_after) == (["u008@one.test"], None)


def test_summary_pages_are_the_records_of_the_orm_pages_in_the_same_order(session: Session):
    one, two = make_domain(session, "one.test"), make_domain(session, "two.test")
    bulk(
        session,
        one,
        12,
        pop3_enabled=lambda n: n % 2 == 0,
        imap_enabled=lambda n: n % 2 == 1 or n % 3 != 0,
        plan=lambda n: "trial" if n % 4 == 0 else "paid",
        trial_expires_at=lambda n: one.created_at if n % 4 == 0 else None,
        contact_email=lambda n: f"owner{n}@else.test" if n % 5 == 0 else None,
        used_bytes=lambda n: n * 1000,
    )
    bulk(session, two, 3)
    owner = session.scalars(select(Mailbox).where(Mailbox.address == "u004@one.test")).one()
    for alias in ("zed@one.test", "abe@one.test"):
        provisioning.create_alias(session, alias, owner, actor=TEST_ACTOR)
    session.commit()
    for options in (
        {},
        {"descending": True},
        {"sort": "used", "descending": True},
        {"search": "u00"},
        {"plan": "trial"},
        {"domain_ids": {two.id}},
        {"domain_ids": set()},
    ):
        for page in (1, 2, 9):
            orm = reports.list_mailboxes(session, page=page, per_page=5, **options)
            rows = reports.list_mailboxes(session, page=page, per_page=5, summaries=True, **options)
            assert rows.items == [mailbox.to_dict() for mailbox in orm.items], options
            assert (rows.total, rows.page) == (orm.total, orm.page)
    keyset = reports.mailboxes_after(session, "u003@one.test", per_page=4, summaries=True)
    orm_keyset = reports.mailboxes_after(session, "u003@one.test", per_page=4)
    assert keyset.items == [mailbox.to_dict() for mailbox in orm_keyset.items]
    assert keyset.next_after == orm_keyset.next_after == "u007@one.test"
    assert keyset.items[0]["aliases"] == ["abe@one.test", "zed@one.test"]


def test_pages_by_address_seek_to_the_same_rows_as_an_offset(session: Session):
    one = make_domain(session, "one.test")
    bulk(session, one, 23, status=lambda n: "suspended" if n % 3 == 0 else "active")
    everyone = sorted(session.scalars(select(Mailbox.address)))
    suspended = sorted(a for n, a in enumerate(everyone) if n % 3 == 0)
    for descending in (False, True):
        for wanted, options in ((everyone, {}), (suspended, {"status": "suspended"})):
            expected = sorted(wanted, reverse=descending)
            seen = []
            for number in range(1, 7):
                page = reports.list_mailboxes(
                    session, page=number, per_page=4, descending=descending, **options
                )
                if page.page != number:  # past the end: the last page again
                    break
                seen += [m.address for m in page.items]
            assert seen == expected, (descending, options)


def test_an_estimated_total_is_reused_for_the_same_select_for_a_while(
    session: Session, monkeypatch: pytest.MonkeyPatch
):
    one = make_domain(session, "one.test")
    bulk(session, one, 9)
    statements: list[str] = []

    def count_statement(*args: Any) -> None:
        statements.append(args[2])

    def counted(query: Any, cap: int) -> tuple[tuple[int, bool], int]:
        statements.clear()
        event.listen(db.engine, "before_cursor_execute", count_statement)
        try:
            return reports.count_matching(session, query, exact_up_to=cap), len(statements)
        finally:
            event.remove(db.engine, "before_cursor_execute", count_statement)

    everyone = reports.mailbox_select()
    first, queries = counted(everyone, 3)
    if not on_postgresql(session):  # always an exact COUNT, never reused
        assert (first, queries) == ((9, False), 1)
        assert counted(everyone, 3) == ((9, False), 1)
        return
    assert first[1] and queries == 2  # the capped COUNT, then the EXPLAIN
    assert counted(everyone, 3) == (first, 0)
    # Another select (other parameters), or an exact total: counted, not reused.
    assert counted(reports.mailbox_select(search="u00"), 3)[1] == 2
    assert counted(reports.mailbox_select(search="u001"), 3) == ((1, False), 1)
    assert counted(reports.mailbox_select(search="u001"), 3) == ((1, False), 1)
    monkeypatch.setattr(reports, "ESTIMATE_REUSE_SECONDS", 0.0)
    assert counted(everyone, 3)[1] == 2  # too old: asked again
