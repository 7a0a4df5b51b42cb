"""Signed bundles: write, verify offline, and fail on any change."""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from auditor import signing
from auditor.bundle import verify_bundle, write_bundle
from auditor.chain import GENESIS, record_hash
from auditor.errors import KeyFileError, UserError
from auditor.keys import KeySet
from auditor.report import Report, finalize_batch
from auditor.scoring import AnalysisSettings
from tests.test_report import make_report, owned_records
from tests.test_scoring import DEC, endpoint_rows, make_records


def _keyset() -> KeySet:
    return KeySet.generate("t", 20, decryption=DEC, secret_decryption=True, seed=3)


def _bundle(tmp_path: Path, *, reveal: bool, name: str = "b") -> tuple[Path, Path]:
    ks = _keyset()
    records = owned_records()
    report = make_report(records, commitment=ks.commitment(), commitment_ok=True)
    key = tmp_path / "keys" / "signing.key"
    out = write_bundle(tmp_path / name, report, records, ks.commitment(), keyset=ks,
                       reveal=reveal, signing_key=key)
    return out, key


@pytest.mark.parametrize("reveal", [False, True])
def test_bundle_round_trip_passes(tmp_path: Path, reveal: bool) -> None:
    out, key = _bundle(tmp_path, reveal=reveal)
    res = verify_bundle(out)
    assert res.ok, res.reason
    assert [c[0] for c in res.checks] == ["signature", "files", "chain", "commitment",
                                          "matcher", "statistics"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (out / "keyset.json").exists() is reveal
    pinned = verify_bundle(out, expected_key=res.public_key)
    assert pinned.ok


def test_unrevealed_bundle_holds_no_secret(tmp_path: Path) -> None:
    out, _ = _bundle(tmp_path, reveal=False)
    ks = _keyset()
    for f in out.iterdir():
        data = f.read_bytes()
        assert DEC.encode() not in data, f.name
        assert all(k.text.encode() not in data for k in ks.keys), f.name
        assert b"Sorry, I cannot" not in data  # response texts dropped


def test_any_flipped_byte_in_any_file_fails(tmp_path: Path) -> None:
    for reveal in (False, True):
        out, _ = _bundle(tmp_path, reveal=reveal, name=f"b{reveal}")
        rng = random.Random(5)
        for f in sorted(out.iterdir()):
            original = f.read_bytes()
            for pos in {0, len(original) // 2, len(original) - 1, rng.randrange(len(original))}:
                flipped = bytearray(original)
                flipped[pos] ^= 0x01
                f.write_bytes(bytes(flipped))
                res = verify_bundle(out)
                assert not res.ok, f"{f.name}@{pos} still verifies"
                assert res.reason
            f.write_bytes(original)
        assert verify_bundle(out).ok


def test_extra_or_missing_file_fails(tmp_path: Path) -> None:
    out, _ = _bundle(tmp_path, reveal=False)
    (out / "notes.txt").write_text("hello")
    assert "unlisted" in verify_bundle(out).reason
    (out / "notes.txt").unlink()
    (out / "report.md").unlink()
    assert not verify_bundle(out).ok


def test_resigned_by_another_key_fails_when_pinned(tmp_path: Path) -> None:
    out, _ = _bundle(tmp_path, reveal=False)
    pinned = verify_bundle(out).public_key
    other = _bundle(tmp_path / "other", reveal=False)[0]
    assert verify_bundle(other).public_key != pinned
    assert "not the expected key" in verify_bundle(other, expected_key=pinned).reason


def _signed_bundle(tmp_path: Path, report: Report, records: list[dict[str, Any]],
                   **kw: Any) -> Path:
    return write_bundle(tmp_path / "x", report, records, report.commitment,
                        signing_key=tmp_path / "k.key", **kw)


def test_signed_but_wrong_statistics_fail(tmp_path: Path) -> None:
    records = owned_records()
    report = make_report(records, AnalysisSettings(alpha=0.05))
    report.analysis = replace(report.analysis, fsr=0.99)  # a figure the evidence does not give
    res = verify_bundle(_signed_bundle(tmp_path, report, records))
    assert not res.ok and res.reason.startswith("statistics")


def test_signed_but_wrong_verdict_fails(tmp_path: Path) -> None:
    records = make_records(endpoint_rows(random.Random(3), 20, 0.0, 20, 0.0, 40, 0.0))
    report = make_report(records)
    report.verdict = "OWNED"
    res = verify_bundle(_signed_bundle(tmp_path, report, records))
    assert not res.ok and "verdict" in res.reason


def test_batch_correction_rederives(tmp_path: Path) -> None:
    reports = finalize_batch([make_report(owned_records(s, f"e{s}"), endpoint_id=f"e{s}")
                              for s in (1, 2, 3)], 0.01, "bh")
    records = owned_records(2, "e2")
    assert verify_bundle(_signed_bundle(tmp_path, reports[1], records)).ok


def test_revealed_matcher_rerun_catches_a_wrong_hit(tmp_path: Path) -> None:
    ks = _keyset()
    records = owned_records()
    bad = next(r for r in records if r["category"] == "decoy")
    bad["hit"], bad["match_kind"] = True, "contains"  # the engine lied; re-chain it
    prev = GENESIS
    for rec in records:
        rec["prev_hash"] = prev
        rec["hash"] = prev = record_hash(rec)
    report = make_report(records, commitment=ks.commitment(), commitment_ok=True)
    out = write_bundle(tmp_path / "m", report, records, ks.commitment(), keyset=ks,
                       reveal=True, signing_key=tmp_path / "k.key")
    res = verify_bundle(out)
    assert not res.ok and res.reason.startswith("matcher")


def test_revealed_keyset_must_match_commitment(tmp_path: Path) -> None:
    ks, other = _keyset(), KeySet.generate("t", 20, decryption=DEC, seed=4)
    records = owned_records()
    report = make_report(records, commitment=other.commitment())
    out = write_bundle(tmp_path / "c", report, records, other.commitment(), keyset=ks,
                       reveal=True, signing_key=tmp_path / "k.key")
    assert verify_bundle(out).reason.startswith("commitment")


def test_signing_key_permissions_and_refusals(tmp_path: Path) -> None:
    key_path = tmp_path / "s.key"
    signing.load_or_create(key_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        signing.load_or_create(key_path)
    records = owned_records()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        write_bundle(tmp_path / "full", make_report(records), records, {})
    with pytest.raises(UserError, match="not a bundle"):
        verify_bundle(tmp_path / "missing")


def test_report_json_is_the_model(tmp_path: Path) -> None:
    out, _ = _bundle(tmp_path, reveal=False)
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert Report.from_dict(data).verdict == "OWNED"
    lines = (out / "evidence.jsonl").read_text(encoding="utf-8").splitlines()
    assert "response" not in json.loads(lines[0]) and "response_sha256" in json.loads(lines[0])


def test_engine_marked_error_is_accepted_but_not_a_false_owned(tmp_path: Path) -> None:
    weak = make_records(endpoint_rows(random.Random(3), 20, 0.0, 20, 0.0, 40, 0.0))
    report = make_report(weak)
    report.verdict = "ERROR"  # the endpoint failed midway: the engine says so
    assert verify_bundle(_signed_bundle(tmp_path / "a", report, weak)).ok
    strong = owned_records()
    report = make_report(strong)
    report.verdict = "ERROR"
    assert not verify_bundle(_signed_bundle(tmp_path / "b", report, strong)).ok
