"""SIGKILL the `auditor audit` process at random moments, resume each time: nothing lost.

The endpoint is a fingerprinted fake with transient faults, so kills land between attempts,
inside retries and during commits. After the last resume every planned query has exactly
one final record, no request reached the server after its query's success was recorded, the
chain verifies, and the verdict is the one a clean run gives. A torn last record (written by
hand after one of the kills) is quarantined on resume and the resume says so.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from auditor.chain import verify_records
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import Plan
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer
from tests.faults import FaultInjector

pytestmark = pytest.mark.slow

KILLS = 6
KINDS = ("500", "503", "429_ms", "reset", "malformed_json", "empty_choices")


def _cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-c", "from auditor.cli import main; main()",
                                 *args], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _read(store: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not store.exists():
        return []
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        db.close()


def _count(store: Path) -> int:
    rows = _read(store, "SELECT COUNT(*) FROM records")
    return int(rows[0][0]) if rows else 0


def _kill_after(proc: subprocess.Popen[bytes], store: Path, target: int, extra_s: float) -> bool:
    """SIGKILL once the store holds ``target`` records (+ a little); False if it finished."""
    deadline = time.monotonic() + 60
    while _count(store) < target:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "audit made no progress"
        time.sleep(0.005)
    time.sleep(extra_s)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return True


def _tear_last_record(store: Path, aid: str, plan: Plan) -> tuple[int, str]:
    """Append a last record whose hash does not match (a torn write); claims an open query."""
    done = {r[0] for r in _read(store, "SELECT query_id FROM records WHERE audit_id = ? "
                                "AND final = 1", aid)}
    open_q = next(q for q in plan.queries if q.query_id not in done)
    db = sqlite3.connect(store, isolation_level=None)
    db.row_factory = sqlite3.Row
    last = dict(db.execute("SELECT * FROM records WHERE audit_id = ? ORDER BY seq DESC LIMIT 1",
                           (aid,)).fetchone())
    torn = {**last, "seq": last["seq"] + 1, "prev_hash": last["hash"], "hash": "0" * 64,
            "query_id": open_q.query_id, "prompt_id": open_q.prompt_id,
            "category": open_q.category, "final": 1, "outcome": "ok", "hit": 1}
    cols = ",".join(torn)
    db.execute(f"INSERT INTO records ({cols}) VALUES ({','.join('?' * len(torn))})",
               tuple(torn.values()))
    db.close()
    return int(torn["seq"]), open_q.query_id


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_sigkill_and_resume_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(2024)
    ks = KeySet.generate("crash", 20, seed=4)
    ks.save(tmp_path / "keys" / "k.json")
    store, log = tmp_path / "ev.sqlite", tmp_path / "cli.log"
    inj = FaultInjector(fb.fingerprinted(ks), rate=0.25, seed=3, kinds=KINDS)
    kills, torn, aid = 0, None, ""
    with FakeLLMServer(inj, latency_s=0.03) as srv:
        first = ["audit", f"compat:{srv.url}/v1#m", "--keys", "keys/k.json", "--store",
                 "ev.sqlite", "--out", "out", "--no-live", "--fresh", "--no-sequential",
                 "--concurrency", "3"]
        args = first
        for _ in range(KILLS + 10):
            before = _count(store)
            proc = _cli(args, tmp_path, log)
            if kills >= KILLS:
                assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
                break
            if not _kill_after(proc, store, before + rng.randint(2, 9), rng.uniform(0, 0.03)):
                pytest.fail(f"audit finished after only {kills} kills; make it longer")
            kills += 1
            aid = str(_read(store, "SELECT audit_id FROM audits")[0][0])
            recs = _read(store, "SELECT COUNT(*) FROM records WHERE audit_id = ?", aid)
            with EvidenceStore(store) as ev:  # every kill leaves a verifiable chain
                assert ev.verify(aid).ok and ev.verify(aid).count == recs[0][0]
                plan = Plan.from_dict(ev.audit(aid).plan)
            if kills == 3:
                torn = _tear_last_record(store, aid, plan)
            args = ["audit", "--resume", aid, "--store", "ev.sqlite", "--out", "out",
                    "--no-live"]
    assert kills >= 5 and torn is not None
    output = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in output
    with EvidenceStore(store) as ev:
        row, records = ev.audit(aid), ev.records(aid)
        quarantined = ev.quarantined(aid)
        assert row.status == "completed"
        check = verify_records(records)
        assert check.ok, check.reason
    # the torn record: quarantined, reported, and its query really asked afterwards
    torn_seq, torn_query = torn
    assert [q.seq for q in quarantined] == [torn_seq]
    finals: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["final"]:
            assert r["query_id"] not in finals, f"two final records for {r['query_id']}"
            finals[r["query_id"]] = r
    assert set(finals) == {q.query_id for q in plan.queries}
    assert finals[torn_query]["hash"] != "0" * 64
    # nothing reached the server after its query's success was committed
    prompt_of = {q.query_id: next(m["content"] for m in plan.prompts[q.prompt_id]
                                  if m["role"] == "user") for q in plan.queries}
    arrivals = inj.by_prompt()
    for qid, rec in finals.items():
        assert rec["outcome"] == "ok", (qid, rec["error_type"])
        assert max(a.t_wall for a in arrivals[prompt_of[qid]]) <= _wall(rec["ts"]), qid
    # the verdict of a clean run: every key fires, nothing else does
    per_cat = {c: sum(bool(r["hit"]) for r in finals.values() if r["category"] == c)
               for c in ("key", "control", "decoy")}
    assert per_cat == {"key": 20, "control": 0, "decoy": 0}
    bundles = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(bundles) == 1 and "OWNED" in (bundles[0] / "report.md").read_text()
    # last: the resume that quarantined the torn record said so
    assert any("quarantin" in line.lower() and str(torn_seq) in line
               for line in output.splitlines()), "the resume did not report the quarantine"
