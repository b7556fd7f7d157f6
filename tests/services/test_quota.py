"""Quota rules: GB bounds on both sides, GB↔bytes, and the atomic reserve/release."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from provider.errors import QuotaOutOfRange
from provider.models import Mailbox
from provider.services import quota
from provider.services.quota import GIB, QuotaBounds
from tests.conftest import make_mailbox

DEFAULT = QuotaBounds(Decimal(8), Decimal(100))


@pytest.mark.parametrize("gb", ["8", "8.0", "12.5", "99.999", "100", 8, 100.0])
def test_quota_inside_bounds_is_accepted(gb):
    assert quota.quota_bytes_from_gb(gb, DEFAULT) == int(Decimal(str(gb)) * GIB)


@pytest.mark.parametrize("gb", ["7.999", "7", "0", "-8", "100.001", "101", "1000"])
def test_quota_outside_bounds_is_refused_naming_the_range(gb):
    with pytest.raises(QuotaOutOfRange, match="between 8 and 100 GB") as caught:
        quota.quota_bytes_from_gb(gb, DEFAULT)
    assert caught.value.field == "quota_gb"


@pytest.mark.parametrize("gb", ["", "abc", "NaN", "inf", "8GB", None])
def test_quota_that_is_no_number_is_refused(gb):
    with pytest.raises(QuotaOutOfRange, match="number of GB"):
        quota.quota_bytes_from_gb(gb, DEFAULT)


def test_one_gb_is_1024_cubed_bytes():
    assert quota.quota_bytes_from_gb("8", DEFAULT) == 8589934592


def test_bounds_come_from_settings(app_config):
    from provider import create_app

    app_config.update(QUOTA_MIN_GB=0.0001, QUOTA_MAX_GB=2)
    with create_app(app_config).app_context():
        assert quota.quota_bytes_from_gb("0.0001") == int(Decimal("0.0001") * GIB)
        with pytest.raises(QuotaOutOfRange, match=r"between 0\.0001 and 2 GB"):
            quota.quota_bytes_from_gb("3")


def test_format_gb_drops_trailing_zeros():
    assert quota.format_gb(Decimal("8.000")) == "8"
    assert quota.format_gb(12.5) == "12.5"
    assert quota.format_gb(100) == "100"


def _usage(session: Session, mailbox_id: int) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.id == mailbox_id))


def test_reserve_up_to_the_limit_and_not_a_byte_more(session):
    mailbox = make_mailbox(session)
    limit = mailbox.quota_bytes
    assert quota.reserve(session, mailbox.id, limit - 10)
    assert not quota.reserve(session, mailbox.id, 11)
    assert _usage(session, mailbox.id) == limit - 10
    assert quota.reserve(session, mailbox.id, 10)
    assert _usage(session, mailbox.id) == limit
    assert not quota.reserve(session, mailbox.id, 1)


def test_release_gives_back_and_never_goes_negative(session):
    mailbox = make_mailbox(session)
    assert quota.reserve(session, mailbox.id, 1000)
    quota.release(session, mailbox.id, 400)
    assert _usage(session, mailbox.id) == 600
    quota.release(session, mailbox.id, 5000)
    assert _usage(session, mailbox.id) == 0


def test_negative_amounts_are_programming_errors(session):
    mailbox = make_mailbox(session)
    with pytest.raises(ValueError):
        quota.reserve(session, mailbox.id, -1)
    with pytest.raises(ValueError):
        quota.release(session, mailbox.id, -1)


def test_concurrent_reservations_never_exceed_the_quota(session, database_url):
    """Eight writers race for 20 slots that fit 10: exactly 10 win, usage equals the quota."""
    mailbox = make_mailbox(session)
    slot = mailbox.quota_bytes // 10
    mailbox_id = mailbox.id
    engine = create_engine(
        database_url, connect_args={"timeout": 30} if "sqlite" in database_url else {}
    )
    wins: list[bool] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(20 // 8 + 1):
            with Session(engine) as own:
                won = quota.reserve(own, mailbox_id, slot)
                own.commit()
            with lock:
                wins.append(won is not None)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert wins.count(True) == 10
    assert _usage(session, mailbox_id) == 10 * slot


def test_fits_uses_the_same_boundary_as_reserve(session):
    mailbox = make_mailbox(session)
    room = mailbox.quota_bytes - 100
    assert quota.reserve(session, mailbox.id, room)
    assert quota.fits(session, mailbox.id, 100) and not quota.fits(session, mailbox.id, 101)
    assert not quota.reserve(session, mailbox.id, 101) and quota.reserve(session, mailbox.id, 100)
    assert not quota.fits(session, mailbox.id, 1)
