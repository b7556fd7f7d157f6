"""The README's CLI section documents every `provider` command and every scheduled job."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from jobs.scheduler import JOBS
from provider.commands import BY_NAME

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README.split("## The `provider` command", 1)[1].split("\n## ", 1)[0]


def _lines_of(group: str) -> str:
    return "\n".join(line for line in SECTION.splitlines() if line.startswith(f"provider {group} "))


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_command_and_subcommand_is_in_the_readme(name: str) -> None:
    command = BY_NAME[name]
    if not isinstance(command, click.Group):
        assert re.search(rf"^provider {name}\b", SECTION, re.M), name
        return
    lines = _lines_of(name)
    assert lines, f"no `provider {name} …` line"
    for sub in command.commands:
        assert re.search(rf"(provider {name} |\| ){re.escape(sub)}\b", lines), f"{name} {sub}"


@pytest.mark.parametrize("job", [job.name for job in JOBS])
def test_every_job_is_described_with_its_setting(job: str) -> None:
    setting = next(j.cron_setting for j in JOBS if j.name == job)
    row = re.search(rf"^\| `{re.escape(job)}` \| `{setting}` .*\|$", SECTION, re.M)
    assert row, job
