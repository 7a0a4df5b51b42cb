"""The evidence store: append-only, hash-chained, verifiable, exportable, 0600."""

from __future__ import annotations

import itertools
import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from auditor.chain import GENESIS, verify_records
from auditor.errors import AuditFailed, UserError
from auditor.evidence import EvidenceStore


def _fields(audit_id: str, n: int, *, final: bool = True) -> dict[str, Any]:
    return {
        "audit_id": audit_id, "endpoint_id": "ep", "query_id": f"q{n:04d}",
        "category": "key", "prompt_id": f"k{n:03d}", "sample_index": 0, "attempt": 1,
        "final": final, "outcome": "ok", "hit": n % 2 == 0, "match_kind": "contains",
        "refused": False, "error_type": None, "error_status": None, "latency_s": 0.125,
        "model": "m", "params": {"temperature": 0.0}, "usage": {"prompt_tokens": 3},
        "request": {"messages": [{"role": "user", "content": f"secret-key-{n}"}]},
        "response": f"answer {n}",
    }


def _store_with(tmp_path: Path, n: int, audit_id: str = "a1") -> EvidenceStore:
    store = EvidenceStore(tmp_path / "ev.sqlite")
    for i in range(n):
        store.append(_fields(audit_id, i))
    return store


def _tamper(path: Path, sql: str) -> None:
    """An attacker with file access: drops the guards and edits rows."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS records_no_update")
    db.execute("DROP TRIGGER IF EXISTS records_no_delete")
    for statement in sql.split(";"):
        db.execute(statement)
    db.close()


def test_store_settings_and_mode(tmp_path: Path) -> None:
    with _store_with(tmp_path, 1) as store:
        assert store.pragma("journal_mode") == "wal"
        assert store.pragma("synchronous") == 2  # FULL
        assert store.migrations() == ["0001_audits_records", "0002_quarantine_and_append_only"]
    assert stat.S_IMODE((tmp_path / "ev.sqlite").stat().st_mode) == 0o600
    # reopening applies no migration twice
    with EvidenceStore(tmp_path / "ev.sqlite") as again:
        assert len(again.migrations()) == 2


def test_refuses_store_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "ev.sqlite"
    EvidenceStore(path).close()
    path.chmod(0o644)
    with pytest.raises(UserError, match="readable by others"):
        EvidenceStore(path)


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    with _store_with(tmp_path, 5) as store:
        recs = store.records("a1")
        assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
        assert recs[0]["prev_hash"] == GENESIS
        assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(recs))
        assert recs[2]["hit"] is True and recs[1]["hit"] is False
        assert recs[0]["params"] == {"temperature": 0.0}
        check = store.verify("a1")
        assert check.ok and check.count == 5 and check.head == recs[-1]["hash"]


def test_chains_are_per_audit(tmp_path: Path) -> None:
    with _store_with(tmp_path, 3) as store:
        store.append(_fields("a2", 0))
        assert [r["seq"] for r in store.records("a2")] == [1]
        assert store.verify("a1").ok and store.verify("a2").ok


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    _store_with(tmp_path, 2).close()
    db = sqlite3.connect(tmp_path / "ev.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE records SET hit = 1 WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM records WHERE seq = 1")
    db.close()


@pytest.mark.parametrize(
    ("sql", "bad_seq", "why"),
    [
        ("UPDATE records SET hit = 1 WHERE seq = 2", 2, "content"),
        ("UPDATE records SET response = 'forged' WHERE seq = 3", 3, "response"),
        ("DELETE FROM records WHERE seq = 2", 2, "sequence"),
        # swap the storage order of records 3 and 7
        ("UPDATE records SET rowid = 1000 WHERE seq = 3;"
         "UPDATE records SET rowid = 3 WHERE seq = 7;"
         "UPDATE records SET rowid = 7 WHERE seq = 3", 3, "sequence"),
    ],
)
def test_verify_names_first_bad_record(tmp_path: Path, sql: str, bad_seq: int, why: str) -> None:
    _store_with(tmp_path, 8).close()
    _tamper(tmp_path / "ev.sqlite", sql)
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        check = store.verify("a1")
    assert not check.ok
    assert check.first_bad_seq == bad_seq
    assert why in check.reason


def test_torn_last_record_is_quarantined(tmp_path: Path) -> None:
    store = _store_with(tmp_path, 3)
    good_head = store.verify("a1").head
    # a last row whose hash does not match its content (a torn write)
    db = sqlite3.connect(tmp_path / "ev.sqlite", isolation_level=None)
    row = db.execute("SELECT * FROM records WHERE seq = 3").fetchone()
    cols = [d[0] for d in db.execute("SELECT * FROM records LIMIT 1").description]
    forged = dict(zip(cols, row, strict=True))
    forged.update(seq=4, prev_hash=good_head, hash="f" * 64, query_id="q9999")
    db.execute(f"INSERT INTO records ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
               tuple(forged.values()))
    db.close()
    assert not store.verify("a1").ok
    moved = store.repair_tail("a1")
    assert moved is not None and moved.seq == 4
    assert store.verify("a1").ok and store.verify("a1").count == 3
    assert [q.seq for q in store.quarantined("a1")] == [4]
    assert "q9999" not in store.completed_queries("a1")
    # the chain continues after the quarantined record
    assert store.append(_fields("a1", 3))["seq"] == 4
    assert store.verify("a1").ok
    store.close()


def test_damage_before_the_tail_is_refused(tmp_path: Path) -> None:
    _store_with(tmp_path, 4).close()
    _tamper(tmp_path / "ev.sqlite", "UPDATE records SET hit = 1 WHERE seq = 2")
    with EvidenceStore(tmp_path / "ev.sqlite") as store, \
            pytest.raises(AuditFailed, match="record 2"):
        store.repair_tail("a1")


def test_export_jsonl_revealed_and_redacted(tmp_path: Path) -> None:
    with _store_with(tmp_path, 4) as store:
        hidden = store.export_jsonl("a1", tmp_path / "hidden.jsonl")
        shown = store.export_jsonl("a1", tmp_path / "shown.jsonl", reveal=True)
    hidden_recs = [json.loads(line) for line in hidden.read_text().splitlines()]
    shown_recs = [json.loads(line) for line in shown.read_text().splitlines()]
    assert "secret-key" not in hidden.read_text()
    assert all("request" not in r for r in hidden_recs)
    assert "secret-key-1" in shown.read_text()
    assert stat.S_IMODE(shown.stat().st_mode) == 0o600
    assert verify_records(hidden_recs).ok and verify_records(shown_recs).ok
    shown_recs[1]["response"] = "forged"
    assert verify_records(shown_recs).first_bad_seq == 2


def test_audit_rows_round_trip(tmp_path: Path) -> None:
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        store.create_audit("a9", "ep", {"queries": [{"query_id": "q0000"}]})
        with pytest.raises(UserError, match="already exists"):
            store.create_audit("a9", "ep", {})
        store.set_status("a9", "running")
        row = store.audit("a9")
        assert row.status == "running" and row.plan["queries"][0]["query_id"] == "q0000"
        with pytest.raises(UserError, match="no audit"):
            store.audit("nope")
        store.append(_fields("a9", 0, final=False))
        store.append({**_fields("a9", 0), "attempt": 2})
        assert store.completed_queries("a9") == {"q0000"}
        assert store.attempts_so_far("a9") == {"q0000": 2}


async def test_group_writer_commits_concurrent_appends_in_few_transactions(
        tmp_path: Path) -> None:
    import asyncio

    from auditor.writer import GroupWriter

    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        writer = GroupWriter(store)
        recs = await asyncio.gather(*(writer.append(_fields(f"a{i % 3}", i))
                                      for i in range(60)))
        await writer.drain()
        assert writer.commits < 60  # grouped: many records per fsync
        assert sorted(r["seq"] for r in recs if r["audit_id"] == "a0") == list(range(1, 21))
        for aid in ("a0", "a1", "a2"):
            check = store.verify(aid)
            assert check.ok and check.count == 20


def test_audits_filter_by_status_and_endpoint_in_creation_order(tmp_path: Path) -> None:
    with EvidenceStore(tmp_path / "ev.sqlite") as store:
        for i, (ep, status) in enumerate([("a", "completed"), ("b", "running"),
                                          ("a", "interrupted"), ("a", "running")]):
            store.create_audit(f"x{i}", ep, {"n": i})
            store.set_status(f"x{i}", status)
        assert [r.audit_id for r in store.audits()] == ["x0", "x1", "x2", "x3"]
        assert [r.audit_id for r in store.audits("running")] == ["x1", "x3"]
        open_a = store.audits("running", "interrupted", endpoint_id="a")
        assert [(r.audit_id, r.plan["n"]) for r in open_a] == [("x2", 2), ("x3", 3)]
        assert store.audits(endpoint_id="zzz") == []
