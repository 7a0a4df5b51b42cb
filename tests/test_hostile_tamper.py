"""Tampering with the evidence of a real audit: the store, and every file of its bundles.

One audit runs through the CLI (fake fingerprinted endpoint); its store and its bundles
(plain and revealed) are then altered the way an owner who wants to escape would: a flipped
byte, a deleted record, two records swapped, even with the manifest re-signed by a key of the
attacker's own. Verification must fail and name the first bad record or file.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from auditor import signing
from auditor.bundle import MANIFEST, PUBLIC_KEY, SIGNATURE, verify_bundle
from auditor.chain import canonical, sha256_hex
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from tests import fakes_behaviour as fb
from tests.cli_util import CliResult, run_cli
from tests.fakeserver import FakeLLMServer

SIGNATURE_FILES = {MANIFEST, SIGNATURE, PUBLIC_KEY}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keys/, ev.sqlite and out/<id>/ (plain) + rev/<id>/ (revealed) of one finished audit."""
    root = tmp_path_factory.mktemp("tamper")
    ks = KeySet.generate("t", 8, seed=9)
    ks.save(root / "keys" / "t.json")
    with FakeLLMServer(fb.fingerprinted(ks)) as srv:
        for out, extra in (("out", []), ("rev", ["--reveal"])):
            res = run_cli("audit", f"compat:{srv.url}/v1#m", "--keys", "keys/t.json",
                          "--store", "ev.sqlite", "--out", out, "--no-live", "--fresh",
                          "--no-sequential", *extra, cwd=root)
            assert res.code == 0, res.both
    return root


@pytest.fixture
def work(audited: Path, tmp_path: Path) -> Path:
    root = tmp_path / "w"
    shutil.copytree(audited, root)
    return root


def _bundle(work: Path, kind: str = "out") -> Path:
    (path,) = [p for p in (work / kind).iterdir() if p.is_dir()]
    return path


def _audit_ids(store: Path) -> list[str]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT audit_id FROM audits ORDER BY created")]
    finally:
        db.close()


def _verify_cli(bundle: Path, cwd: Path) -> CliResult:
    res = run_cli("verify", str(bundle), cwd=cwd)
    assert res.code == 1 and "Traceback" not in res.both, res.both
    return res


# -- the store ----------------------------------------------------------------------------------

def _sql(store: Path, *statements: str) -> None:
    """An attacker with file access: drops the append-only guards and edits rows."""
    db = sqlite3.connect(store, isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS records_no_update")
    db.execute("DROP TRIGGER IF EXISTS records_no_delete")
    for s in statements:
        db.execute(s)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _rowids(store: Path, aid: str, *seqs: int) -> list[int]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return [int(db.execute("SELECT rowid FROM records WHERE audit_id = ? AND seq = ?",
                               (aid, seq)).fetchone()[0]) for seq in seqs]
    finally:
        db.close()


def _flip_in_file(path: Path, needle: bytes) -> None:
    """Change one character of ``needle`` where it sits in the raw file bytes."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "needle must occur exactly once"
    pos = at + len(needle) // 2
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")
    path.write_bytes(bytes(data))


def test_flipped_byte_in_the_store_file_names_its_record(work: Path) -> None:
    store = work / "ev.sqlite"
    aid = _audit_ids(store)[0]
    with EvidenceStore(store) as ev:
        recs = ev.records(aid)
    assert not (work / "ev.sqlite-wal").exists() or (work / "ev.sqlite-wal").stat().st_size == 0
    target = random.Random(1).randrange(2, len(recs))
    _flip_in_file(store, recs[target - 1]["ts"].encode())  # microsecond stamps are unique
    with EvidenceStore(store) as ev:
        check = ev.verify(aid)
    assert not check.ok and check.first_bad_seq == target
    assert check.reason.startswith(f"record {target}:")


def test_verify_store_cli_passes_then_names_the_edited_record(work: Path) -> None:
    store = work / "ev.sqlite"
    ok = run_cli("verify-store", str(store), cwd=work)
    assert ok.code == 0 and "PASS: 2 audit chain(s) intact" in ok.out, ok.both
    aid = _audit_ids(store)[1]
    _sql(store, f"UPDATE records SET hit = 1 - hit WHERE audit_id = '{aid}' AND seq = 3")
    bad = run_cli("verify-store", str(store), cwd=work)
    assert bad.code == 1 and "FAIL at record 3" in bad.out and "1 of 2" in bad.out, bad.both
    only = run_cli("verify-store", str(store), "--audit", _audit_ids(store)[0], cwd=work)
    assert only.code == 0, only.both
    missing = run_cli("verify-store", str(work / "nope.sqlite"), cwd=work)
    assert missing.code == 2 and not (work / "nope.sqlite").exists(), missing.both


@pytest.mark.parametrize("how", ["delete", "swap"])
def test_deleted_or_reordered_record_stops_a_resume(work: Path, how: str) -> None:
    store = work / "ev.sqlite"
    aid = _audit_ids(store)[0]
    target = 5
    if how == "delete":
        _sql(store, f"DELETE FROM records WHERE audit_id = '{aid}' AND seq = {target}")
    else:
        r1, r2 = _rowids(store, aid, target, target + 1)
        _sql(store, f"UPDATE records SET rowid = -1 WHERE rowid = {r1}",
             f"UPDATE records SET rowid = {r1} WHERE rowid = {r2}",
             f"UPDATE records SET rowid = {r2} WHERE rowid = -1")
    with EvidenceStore(store) as ev:
        check = ev.verify(aid)
        assert not check.ok and check.first_bad_seq == target, check.reason
    with sqlite3.connect(store) as db:  # make it resumable: an unfinished audit
        db.execute(f"UPDATE audits SET status = 'interrupted' WHERE audit_id = '{aid}'")
    res = run_cli("audit", "--resume", aid, "--store", "ev.sqlite", "--out", "out2",
                  "--no-live", cwd=work)
    assert res.code == 1 and "Traceback" not in res.both, res.both
    assert f"record {target}" in res.both, res.both
    assert not (work / "out2").exists(), "a bundle was made from damaged evidence"


# -- the bundles --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["out", "rev"])
def test_flipped_byte_in_any_bundle_file_is_named(work: Path, kind: str) -> None:
    bundle = _bundle(work, kind)
    rng = random.Random(kind)
    names = sorted(p.name for p in bundle.iterdir())
    assert {"evidence.jsonl", "report.json", *SIGNATURE_FILES} <= set(names)
    for name in names:
        path = bundle / name
        original = path.read_bytes()
        pos = rng.randrange(len(original))
        path.write_bytes(original[:pos] + bytes([original[pos] ^ 0x04]) + original[pos + 1:])
        res = verify_bundle(bundle)
        assert not res.ok, f"{name}@{pos} still verifies"
        if name in SIGNATURE_FILES:  # which of the three changed cannot be told apart
            assert "signature" in res.reason or name in res.reason, res.reason
        else:
            assert name in res.reason, (name, res.reason)
        path.write_bytes(original)
    assert verify_bundle(bundle).ok


def _records(bundle: Path) -> list[dict[str, Any]]:
    lines = (bundle / "evidence.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def _write_records(bundle: Path, records: list[dict[str, Any]]) -> None:
    (bundle / "evidence.jsonl").write_bytes(b"".join(canonical(r) + b"\n" for r in records))


def _resign(bundle: Path, attacker_key: Path) -> None:
    """Recompute the manifest over the altered files and sign it with another key."""
    key = signing.load_or_create(attacker_key)
    pub = signing.public_hex(key)
    (bundle / PUBLIC_KEY).write_text(pub + "\n", encoding="ascii")
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    manifest["public_key"] = pub
    manifest["files"] = {p.name: sha256_hex(p.read_bytes()) for p in sorted(bundle.iterdir())
                         if p.name not in (MANIFEST, SIGNATURE)}
    data = (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
    (bundle / MANIFEST).write_bytes(data)
    (bundle / SIGNATURE).write_text(signing.sign(key, data) + "\n", encoding="ascii")


def _delete(recs: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    return recs[:i] + recs[i + 1:]


def _swap(recs: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    out = list(recs)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _forge_hit(recs: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    out = [dict(r) for r in recs]
    out[i]["hit"] = not out[i]["hit"]
    return out


def _forge_response(recs: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    out = [dict(r) for r in recs]
    out[i]["response"] = "I'm sorry, I cannot decrypt that."
    return out


@pytest.mark.parametrize(("kind", "edit", "why"), [
    ("out", _delete, "sequence"), ("out", _swap, "sequence"), ("out", _forge_hit, "content"),
    ("rev", _delete, "sequence"), ("rev", _forge_response, "response"),
])
def test_resigned_evidence_edits_name_the_first_bad_record(work: Path, kind: str, edit: Any,
                                                           why: str) -> None:
    bundle = _bundle(work, kind)
    original_signer = verify_bundle(bundle).public_key
    recs = _records(bundle)
    ok_idx = [i for i, r in enumerate(recs[:-1]) if r["outcome"] == "ok"]
    i = random.Random(str(bundle)).choice(ok_idx[1:])
    _write_records(bundle, edit(recs, i))
    _resign(bundle, work / "attacker.key")
    res = verify_bundle(bundle)
    assert not res.ok and res.reason.startswith(f"chain: record {i + 1}:"), res.reason
    assert why in res.reason
    assert not verify_bundle(bundle, expected_key=original_signer).ok
    cli = _verify_cli(bundle, work)
    assert f"record {i + 1}" in cli.out


def test_cli_verify_names_a_flipped_file(work: Path) -> None:
    bundle = _bundle(work)
    path = bundle / "report.md"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    res = _verify_cli(bundle, work)
    assert "report.md" in res.out
