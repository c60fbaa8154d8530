"""``chio-budget report`` and ``sample-log`` as operators run them."""

from __future__ import annotations

import gzip
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.toolkit.costquery import CostQuery, execute_cost_query
from chio_budget.toolkit.receipts import iter_receipts
from chio_budget.toolkit.samplelog import sample_records
from support.guards import ROOT
from support.toolkit import rec, write_log

runner = CliRunner()
CLI = str(ROOT / ".venv" / "bin" / "chio-budget")


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, env={"COLUMNS": "160"})


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("log") / "sample.jsonl"
    r = run("sample-log", "--agents", 6, "--days", 4, "--seed", 3, "-o", path)
    assert r.exit_code == 0, r.output
    return path


def test_json_is_the_query_result_of_the_whole_log(sample):
    r = run("report", sample, "--group-by", "agent", "--all", "--json")
    assert r.exit_code == 0, r.output
    expected = execute_cost_query(iter_receipts([sample]), CostQuery(group_by="agent"), cap=False)
    assert json.loads(r.stdout) == expected
    assert r.stdout.count("\n") == 1  # one compact line, as serde_json::to_string


def test_default_is_the_kernels_capped_answer(sample):
    out = json.loads(run("report", sample, "--json").stdout)
    assert out["summary"]["receipt_count"] == 500 and out["truncated"] is True


def test_options_map_onto_the_query(sample):
    r = run("report", sample, "--json", "--agent-id", "agent-01", "--tool-server", "llm", "--tool-name",
            "complete", "--since", "2026-01-02", "--until", "1767484800", "--currency", "USD", "--limit", "7",
            "--group-by", "session")
    q = CostQuery(agent_id="agent-01", tool_server="llm", tool_name="complete", since=1767312000,
                  until=1767484800, currency="USD", limit=7, group_by="session")
    assert json.loads(r.stdout) == execute_cost_query(iter_receipts([sample]), q)


def test_table_shows_groups_and_their_spend_against_the_policy(tmp_path):
    pol = tmp_path / "p"
    pol.mkdir()
    (pol / "default.yaml").write_text("currency: USD\nmax_total: 100\nmax_per_agent: 40\n")
    log = write_log(tmp_path / "l.jsonl", [rec("r1", agent="a1", cost=50), rec("r2", agent="a2", cost=30),
                                          rec("r3", agent="a3", cost=5, currency="EUR")])
    r = run("report", log, "--group-by", "agent", "--policies", pol)
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip().startswith("a")}
    assert "0.50 USD" in rows["a1"] and "0.40 USD" in rows["a1"] and "125% over" in rows["a1"]
    assert "0.30 USD" in rows["a2"] and "75%" in rows["a2"]
    assert "n/a (EUR)" in rows["a3"]
    assert "- (no cost, or mixed currencies)" in r.stdout  # the summary mixes USD and EUR


def test_bad_record_is_located_exit_2_and_nothing_reported(tmp_path):
    log = write_log(tmp_path / "l.jsonl", [rec("r1"), {**rec("r2"), "timestamp": -3}, rec("r3")])
    r = subprocess.run([CLI, "report", str(log), "--json"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip() == f"{log}:2: timestamp: must be an integer 0..2^64-1, got -3"


def test_skip_bad_counts_reports_and_skips(tmp_path):
    log = write_log(tmp_path / "l.jsonl", [rec("r1"), "[]", rec("r3")])
    r = subprocess.run([CLI, "report", str(log), "--json", "--skip-bad"], capture_output=True, text=True)
    assert r.returncode == 0
    assert json.loads(r.stdout)["summary"]["receipt_count"] == 2
    assert r.stderr.splitlines() == ["skipped 1 bad record:",
                                     f"  {log}:2: <record>: a record must be a JSON object (CostMetadata), got array"]


def test_gzip_stdin_and_several_files(tmp_path):
    gz = write_log(tmp_path / "a.jsonl.gz", [rec("r1", cost=1)])
    plain = write_log(tmp_path / "b.jsonl", [rec("r2", cost=2)])
    r = run("report", gz, "-", plain, "--json", input=json.dumps(rec("r3", cost=4)) + "\n")
    assert json.loads(r.stdout)["summary"]["total_monetary_cost"] == {"units": 7, "currency": "USD"}


@pytest.mark.parametrize("args, message", [
    (["--group-by", "day"], "--group-by: must be one of none, session, agent, tool, got 'day'"),
    (["--since", "yesterday"], "--since: expected Unix seconds or an ISO 8601 date"),
    (["--until", "1969-12-31"], "--until: before 1970-01-01"),
    (["--policies", "nowhere"], "nowhere:1: no such policy directory"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    log = write_log(tmp_path / "l.jsonl", [rec()])
    r = run("report", log, *args)
    assert r.exit_code == 2 and message in r.output


def test_missing_file_exit_2(tmp_path):
    r = run("report", tmp_path / "none.jsonl")
    assert r.exit_code == 2 and "none.jsonl:1: <file>: cannot read: No such file or directory" in r.output


def test_help_documents_exit_codes():
    out = run("report", "--help").output
    assert "Exit codes: 0 ok; 2 bad input" in out


# --- sample-log ------------------------------------------------------------------------------------

def test_sample_log_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        assert run("sample-log", "--agents", 5, "--days", 2, "--seed", seed, "-o", path).exit_code == 0
    assert a.read_bytes() == b.read_bytes()                    # same arguments, same bytes (gzip mtime 0)
    assert gzip.decompress(a.read_bytes()) != c.read_bytes()   # another seed, another log
    stdout = run("sample-log", "--agents", 5, "--days", 2, "--seed", 1).stdout
    assert stdout.encode() == gzip.decompress(a.read_bytes())


def test_sample_log_is_realistic():
    records = list(sample_records(agents=20, days=30, seed=1))
    parsed = list(iter_receipts_from(records))
    assert len(parsed) == len(records) > 10_000                        # enough to show the progress bar
    assert [r.timestamp for r in parsed] == sorted(r.timestamp for r in parsed)
    assert len({r.tool_server for r in parsed}) >= 5 and len({r.tool_key for r in parsed}) >= 8
    assert len({r.agent_id for r in parsed}) == 20
    assert any(r.session_id is None for r in parsed) and len({r.session_id for r in parsed}) > 500
    assert {r.money[1] for r in parsed if r.money} == {"USD", "EUR"}
    assert any(r.money is None for r in parsed)                         # tools that cost nothing
    per_agent: dict[str, int] = {}
    for r in parsed:
        per_agent[r.agent_id] = per_agent.get(r.agent_id, 0) + 1
    counts = sorted(per_agent.values())
    assert counts[-1] > 4 * counts[len(counts) // 2]                   # a few heavy agents


def iter_receipts_from(records):
    from chio_budget.toolkit.receipts import parse_line

    for i, r in enumerate(records):
        yield parse_line(json.dumps(r).encode(), f"<sample>:{i + 1}")


# --- progress ---------------------------------------------------------------------------------------

def _run_on_pty(args: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (as a person's shell would), stdout piped."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read().decode()
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out, err.decode(errors="replace")


@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminals as on Linux")
def test_progress_bar_on_a_terminal_past_ten_thousand_records(tmp_path):
    log = tmp_path / "big.jsonl"
    log.write_text("".join(json.dumps(rec(f"r{i}", i)) + "\n" for i in range(12_000)))
    code, out, err = _run_on_pty([CLI, "report", str(log), "--json", "--all"])
    assert code == 0
    assert json.loads(out)["summary"]["receipt_count"] == 12_000   # stdout stays clean JSON
    assert "report" in err and "records" in err and "\x1b[" in err  # the bar was drawn on the terminal
    small = write_log(tmp_path / "small.jsonl", [rec()])
    code, _, err = _run_on_pty([CLI, "report", str(small), "--json"])
    assert code == 0 and err == ""                                  # short logs: no bar


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    log = tmp_path / "big.jsonl"
    log.write_text("".join(json.dumps(rec(f"r{i}", i)) + "\n" for i in range(10_500)))
    r = subprocess.run([CLI, "report", str(log), "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""


def test_progress_starts_past_the_threshold_only_on_a_terminal():
    import io

    from rich.console import Console

    from chio_budget.toolkit.progress import LogProgress

    def drawn(terminal: bool, records: int, threshold: int = 10_000) -> str:
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=100)
        with LogProgress(1000, label="simulate: deciding", console=console, threshold=threshold) as bar:
            bar(records, 500)
        return buf.getvalue()

    assert drawn(True, 9_999) == ""
    assert "simulate: deciding" in drawn(True, 10_000) and "10,000 records" in drawn(True, 10_000)
    assert drawn(False, 50_000) == ""
    assert "simulate: deciding" in drawn(True, 5, threshold=0)  # a run known to be long shows at once


def test_commands_work_when_the_cli_runs_as_main():
    # python -m chio_budget.cli runs cli.py as __main__: the toolkit must register into that app
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "sample-log", "--agents", "1", "--days", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["schema"] == "chio.cost-metadata.v1"


def test_a_windowed_limit_is_shown_with_its_window_not_as_a_share(tmp_path):
    pol = tmp_path / "p"
    pol.mkdir()
    (pol / "default.yaml").write_text("currency: USD\nmax_total: 100\nwindow: monthly\n"
                                      "max_per_tool:\n  \"s1:t1\": {units: 40, window: all_time}\n")
    log = write_log(tmp_path / "l.jsonl", [rec("r1", cost=50)])
    r = run("report", log, "--group-by", "tool", "--policies", pol)
    assert "1.00 USD per monthly  n/a (windowed)" in r.stdout  # max_total, monthly: not comparable
    assert "125% over" in r.stdout                               # the all-time tool limit is
