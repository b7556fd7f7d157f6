"""WTForms validators shared by the panel's and the portal's forms."""

from __future__ import annotations

from datetime import date

from wtforms import Field, Form
from wtforms.validators import ValidationError

# Dates a filter accepts: every stored time is after 1970, and the day after the last one must
# still be a date (an inclusive "until" is compared with the next midnight).
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(9999, 12, 30)


class DateWithin:
    """A date between EARLIEST_DATE and LATEST_DATE (inclusive), else a message on the field."""

    def __init__(self, earliest: date = EARLIEST_DATE, latest: date = LATEST_DATE) -> None:
        self.earliest = earliest
        self.latest = latest
        self.message = f"Enter a date between {earliest} and {latest}."

    def __call__(self, form: Form, field: Field) -> None:
        value = field.data
        if isinstance(value, date) and not self.earliest <= value <= self.latest:
            raise ValidationError(self.message)
