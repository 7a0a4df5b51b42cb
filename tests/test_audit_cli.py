"""`auditor audit` end to end in subprocesses: exit codes, bundles, SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from auditor.bundle import verify_bundle
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, FakeReply, FakeRequest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-c", "from auditor.cli import main; main()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "150"}


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args, cwd=cwd), cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def keyfile(tmp_path: Path) -> tuple[KeySet, Path]:
    ks = KeySet.generate("cli", 10, seed=11)
    return ks, ks.save(tmp_path / "keys" / "cli.json")


def _audit_args(url: str, key_path: Path, *extra: str) -> list[str]:
    return ["audit", "compat:fake-model", "--base-url", url + "/v1", "--keys", str(key_path),
            "--store", "ev.sqlite", "--out", "bundles", "--no-live", "--fresh", *extra]


@pytest.mark.slow
def test_audit_cli_owned_with_bundle(tmp_path: Path, keyfile: tuple[KeySet, Path]) -> None:
    ks, path = keyfile
    with FakeLLMServer(fb.fingerprinted(ks)) as srv:
        proc = _run(_audit_args(srv.url, path, "--no-sequential"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OWNED" in proc.stdout
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in proc.stdout + proc.stderr  # never print key text or decryption
    bundles = list((tmp_path / "bundles").iterdir())
    assert len(bundles) == 1
    result = verify_bundle(bundles[0])
    assert result.ok, result.reason
    assert "k000" in (bundles[0] / "evidence.jsonl").read_text()
    assert ks.keys[0].text not in (bundles[0] / "evidence.jsonl").read_text()


@pytest.mark.slow
def test_audit_cli_bad_input_and_failure_codes(tmp_path: Path,
                                               keyfile: tuple[KeySet, Path]) -> None:
    _, path = keyfile
    assert _run(["audit", "compat:m"], tmp_path).returncode == 2  # no --keys
    assert _run(["audit", "--resume", "nope", "--store", "ev.sqlite"], tmp_path).returncode == 2
    missing = _run(_audit_args("http://127.0.0.1:9", path, "--concurrency", "0"), tmp_path)
    assert missing.returncode == 2 and "concurrency" in missing.stderr
    # nothing listens on port 9: never reached => one message naming it, exit 2, attempts kept
    down = _run(_audit_args("http://127.0.0.1:9", path, "--max-queries", "8"), tmp_path)
    assert down.returncode == 2, down.stderr
    assert down.stderr.strip().splitlines() == [down.stderr.strip()]
    assert "cannot reach http://127.0.0.1:9/v1" in down.stderr and not down.stdout.strip()
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        (row,) = store.audits()
        assert row.status == "error" and store.records(row.audit_id)
        assert store.verify(row.audit_id).ok
    assert not (tmp_path / "bundles").exists()
    # a missing credential variable is refused before any audit is created
    cred = _run(["audit", "openai:gpt-x", "--keys", str(path), "--store", "ev.sqlite",
                 "--credential-env", "SURELY_UNSET_VAR_X", "--no-live"], tmp_path)
    assert cred.returncode == 2 and "SURELY_UNSET_VAR_X" in cred.stderr
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        assert len(store.audits()) == 1


def test_dry_run_prints_plan_and_cost(tmp_path: Path, keyfile: tuple[KeySet, Path]) -> None:
    from typer.testing import CliRunner

    from auditor.cli import app

    ks, path = keyfile
    res = CliRunner().invoke(app, ["audit", "openai:gpt-4o-mini", "--keys", str(path),
                                   "--dry-run", "--decoys", "2", "--samples", "2",
                                   "--store", str(tmp_path / "ev.sqlite")],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output
    row = next(line for line in res.output.splitlines() if "openai:gpt-4o-mini" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[1:4] == ["20", "20", "40"]  # keys, controls, decoys (samples x2)
    assert float(cells[-1]) > 0  # priced from auditor/data/prices.toml
    assert not (tmp_path / "ev.sqlite").exists()  # a dry run writes nothing
    assert all(k.text not in res.output for k in ks.keys)


def _wait_for_records(store: Path, n: int, proc: subprocess.Popen[str], limit_s: float) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists():
            try:
                db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
                count = int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
                db.close()
                if count >= n:
                    return count
            except sqlite3.Error:
                pass
        time.sleep(0.02)
    raise AssertionError("audit did not reach the kill point in time")


@pytest.mark.slow
def test_sigkill_then_resume_sends_no_completed_query_twice(
        tmp_path: Path, keyfile: tuple[KeySet, Path]) -> None:
    ks, path = keyfile
    inner = fb.fingerprinted(ks)

    async def slow(req: FakeRequest) -> FakeReply:
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        reply.delay_s = 0.08
        return reply

    with FakeLLMServer(slow) as srv:
        args = _audit_args(srv.url, path, "--no-sequential", "--concurrency", "3",
                           "--decoys", "2")
        proc = subprocess.Popen(_cli(*args, cwd=tmp_path), cwd=tmp_path, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        try:
            _wait_for_records(tmp_path / "ev.sqlite", 12, proc, 60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        with EvidenceStore(tmp_path / "ev.sqlite") as store:
            (audit_row,) = store.audits()
            done_before = store.completed_queries(audit_row.audit_id)
            plan = audit_row.plan
        assert 12 <= len(done_before) < len(plan["queries"])
        sent_before = len(srv.requests)
        resumed = _run(["audit", "--resume", audit_row.audit_id, "--store", "ev.sqlite",
                        "--out", "bundles", "--no-live"], tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        prompts = [r.prompt for r in srv.requests]
    assert len(prompts) > sent_before
    sent = Counter(prompts)
    by_query = {q["query_id"]: plan["prompts"][q["prompt_id"]][-1]["content"]
                for q in plan["queries"]}
    for qid in done_before:  # a query completed before the kill went out exactly once
        assert sent[by_query[qid]] == 1, qid
    assert set(sent) == set(by_query.values())  # and every planned query was sent
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        check = store.verify(audit_row.audit_id)
        finals = Counter(r["query_id"] for r in store.records(audit_row.audit_id)
                         if r["final"])
        assert store.audit(audit_row.audit_id).status == "completed"
    assert check.ok, check.reason
    assert set(finals.values()) == {1} and len(finals) == len(plan["queries"])
    report = json.loads(next((tmp_path / "bundles").glob("*/report.json")).read_text())
    assert report["verdict"] == "OWNED"
