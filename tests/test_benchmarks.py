"""The ingest benchmark runs end to end and keeps the ``--json`` keys that scripts read (#5).

No timing is asserted: the numbers belong to the benchmark's report, not to a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.dovecot import dovecot_binary
from tests.servers.fixtures import require

ROOT = Path(__file__).resolve().parent.parent

ISSUE_KEYS = (
    "floor_msgs_per_s",
    "sqlite_msgs_per_s",
    "postgres_msgs_per_s",
    "ratio_sqlite",
    "ratio_postgres",
    "peak_rss_mb",
)


@pytest.mark.live
@pytest.mark.slow
def test_ingest_benchmark_reports_the_issue_keys(postgres_database: str) -> None:
    require(dovecot_binary(), "dovecot not found on PATH (apt-get install dovecot-imapd)")
    # Each pass asserts that it stored every message, the parsing-free what-if included.
    run = subprocess.run(
        [sys.executable, "benchmarks/ingest.py", "--n", "150", "--json", "--parse-ceiling"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for key in (*ISSUE_KEYS, "sqlite_parse_free_msgs_per_s", "ratio_sqlite_parse_free"):
        assert report[key] > 0, key
    for backend in ("sqlite", "postgres"):
        expected = report[f"{backend}_msgs_per_s"] / report["floor_msgs_per_s"]
        assert report[f"ratio_{backend}"] == pytest.approx(expected)
