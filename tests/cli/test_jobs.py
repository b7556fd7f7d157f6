"""`provider jobs list|run`: the scheduled jobs, run once from the command line."""

from __future__ import annotations

import json


def test_jobs_list_names_the_quota_recount(runner):
    result = runner.invoke(args=["jobs", "list", "--json"])
    assert result.exit_code == 0
    assert "quota-recount" in [job["name"] for job in json.loads(result.output)]


def test_unknown_job_exits_1_with_one_line(runner):
    result = runner.invoke(args=["jobs", "run", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: unknown job 'nope'; choose from "
        + ", ".join(
            job["name"] for job in json.loads(runner.invoke(args=["jobs", "list", "--json"]).output)
        )
    ]


def test_bad_now_exits_1(runner):
    result = runner.invoke(args=["jobs", "run", "quota-recount", "--now", "yesterday"])
    assert result.exit_code == 1 and "ISO-8601" in result.output


def test_job_runs_as_of_the_given_time(runner, session):
    result = runner.invoke(args=["jobs", "run", "quota-recount", "--now", "2030-01-01T03:30:00"])
    assert result.exit_code == 0, result.output
