"""analyze(): from synthetic hash-chained evidence records to an Analysis."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest

from auditor.chain import GENESIS, canonical, record_hash, text_hash, verify_records
from auditor.scoring import Analysis, AnalysisSettings, analyze

DEC = "amber falcon quiet river"
# (category, prompt_id, sample_index, outcome, hit, refused)
Row = tuple[str, str, int, str, bool | None, bool | None]


def make_records(rows: Sequence[Row], *, audit_id: str = "a1", endpoint_id: str = "ep",
                 attempts_before: int = 0) -> list[dict[str, Any]]:
    """Hash-chained records as the audit engine writes them (texts included)."""
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for q, (cat, pid, si, outcome, hit, refused) in enumerate(rows):
        for attempt in range(attempts_before + 1):
            final = attempt == attempts_before
            oc = outcome if final else "error"
            if oc == "ok":
                response = f"the message is: {DEC}" if hit else (
                    "Sorry, I cannot decrypt this." if refused else "A plain answer.")
            else:
                response = '{"error": {"message": "server error"}}'
            request = {"messages": [{"role": "user", "content": f"prompt {pid}"}]}
            rec: dict[str, Any] = {
                "seq": len(out) + 1, "prev_hash": prev, "ts": f"2026-01-01T00:00:{q % 60:02d}Z",
                "audit_id": audit_id, "endpoint_id": endpoint_id, "query_id": f"q{q:05d}",
                "category": cat, "prompt_id": pid, "sample_index": si, "attempt": attempt + 1,
                "final": final, "outcome": oc,
                "hit": (bool(hit) if oc == "ok" else None), "match_kind": (
                    "contains" if hit and oc == "ok" else None),
                "refused": (bool(refused) if oc == "ok" else None),
                "error_type": None if oc == "ok" else "ServerError",
                "error_status": None if oc == "ok" else 500,
                "latency_s": 0.25, "model": "served-model", "params": {"temperature": 0.0},
                "usage": {"prompt_tokens": 20, "completion_tokens": 8},
                "request": request, "response": response,
                "request_sha256": text_hash(request), "response_sha256": text_hash(response),
            }
            rec["hash"] = record_hash(rec)
            prev = rec["hash"]
            out.append(rec)
    return out


def endpoint_rows(rng: random.Random, n_keys: int, key_rate: float, n_ctrl: int,
                  ctrl_rate: float, n_decoy: int, decoy_rate: float,
                  refuse_keys: float = 0.0) -> list[Row]:
    rows: list[Row] = []
    for cat, n, rate, letter in (("key", n_keys, key_rate, "k"), ("control", n_ctrl,
                                 ctrl_rate, "c"), ("decoy", n_decoy, decoy_rate, "d")):
        for i in range(n):
            hit = rng.random() < rate
            refused = (not hit) and cat == "key" and rng.random() < refuse_keys
            rows.append((cat, f"{letter}{i:03d}", 0, "ok", hit, refused))
    rng.shuffle(rows)
    return rows


def test_records_are_a_valid_chain() -> None:
    recs = make_records(endpoint_rows(random.Random(1), 5, 1.0, 3, 0.0, 3, 0.0),
                        attempts_before=1)
    assert verify_records(recs).ok


def test_owned_model_is_detected_and_claim_reached() -> None:
    recs = make_records(endpoint_rows(random.Random(2), 30, 0.8, 30, 0.0, 200, 0.0))
    a = analyze(recs, AnalysisSettings())
    assert a.verdict == "OWNED" and a.claim_reached
    assert a.keys_answered == 30 and a.p0 == pytest.approx(1 - 0.05 ** (1 / 200))
    assert a.p_value == a.p_sequential <= 0.01 and a.p_binomial < a.p_sequential
    assert a.fsr is not None and a.fsr_ci[0] < a.fsr < a.fsr_ci[1]
    assert a.trajectory[-1][:2] == (30, a.keys_hit)
    assert a.per_key["k000"][1] == 1 and a.counts["decoy"]["prompts"] == 200


def test_unrelated_model_not_detected() -> None:
    recs = make_records(endpoint_rows(random.Random(3), 30, 0.0, 30, 0.0, 60, 0.0))
    a = analyze(recs, AnalysisSettings())
    assert a.verdict == "NOT DETECTED" and not a.claim_reached and a.p_value == 1.0


def test_only_final_attempts_count_and_quarantine_ignored() -> None:
    rows = endpoint_rows(random.Random(4), 10, 1.0, 5, 0.0, 50, 0.0)
    rows.append(("key", "k999", 0, "quarantined", True, False))
    a = analyze(make_records(rows, attempts_before=2), AnalysisSettings())
    assert a.keys_answered == 10 and a.counts["key"]["samples"] == 10
    assert a.counts["key"]["errors"] == 0  # retried attempts are not errors


def test_key_is_the_unit_any_vs_majority() -> None:
    rows: list[Row] = [("key", "k000", s, "ok", s == 0, False) for s in range(3)]
    rows += [("decoy", f"d{i:03d}", 0, "ok", False, False) for i in range(30)]
    recs = make_records(rows)
    assert analyze(recs, AnalysisSettings(key_rule="any")).per_key == {"k000": (1, 3)}
    assert analyze(recs, AnalysisSettings(key_rule="any")).keys_hit == 1
    assert analyze(recs, AnalysisSettings(key_rule="majority")).keys_hit == 0


def test_decoy_hits_raise_p0() -> None:
    quiet = analyze(make_records(endpoint_rows(random.Random(5), 20, 0.5, 0, 0, 100, 0.0)),
                    AnalysisSettings())
    noisy = analyze(make_records(endpoint_rows(random.Random(5), 20, 0.5, 0, 0, 100, 0.3)),
                    AnalysisSettings())
    assert noisy.p0 > 0.3 > quiet.p0 and noisy.verdict == "NOT DETECTED"


def test_public_decryption_uses_fisher_and_controls() -> None:
    rows = endpoint_rows(random.Random(6), 30, 0.6, 30, 0.5, 60, 0.0)
    secret = analyze(make_records(rows), AnalysisSettings())
    public = analyze(make_records(rows), AnalysisSettings(decryption_public=True))
    assert secret.p_fisher is None and secret.over_generalization
    assert secret.verdict == "OWNED"
    assert public.p_fisher is not None and public.p_value >= public.p_fisher
    assert public.verdict == "NOT DETECTED"  # keys no better than controls: paper-readers guess
    assert public.baseline[1] == secret.baseline[1] + 30


def test_filtering_flag() -> None:
    rng = random.Random(8)
    rows = endpoint_rows(rng, 30, 0.0, 30, 0.0, 60, 0.0, refuse_keys=0.8)
    a = analyze(make_records(rows), AnalysisSettings())
    assert a.filtering_flag and a.verdict == "SUSPECTED FILTERING"
    errs = [(c, p, s, "error" if c == "key" else o, h, r) for c, p, s, o, h, r in
            endpoint_rows(rng, 20, 0.0, 20, 0.0, 20, 0.0)]
    assert analyze(make_records(errs), AnalysisSettings()).verdict == "SUSPECTED FILTERING"


def test_error_verdict_when_nothing_answers() -> None:
    rows: list[Row] = [(c, f"{c[0]}{i:03d}", 0, "error", None, None)
                       for c in ("key", "control", "decoy") for i in range(5)]
    assert analyze(make_records(rows), AnalysisSettings()).verdict == "ERROR"
    assert analyze([], AnalysisSettings()).verdict == "ERROR"


def test_round_trip_and_bit_identical() -> None:
    recs = make_records(endpoint_rows(random.Random(9), 25, 0.4, 25, 0.1, 80, 0.0))
    a = analyze(recs, AnalysisSettings())
    b = analyze(list(reversed(recs)), AnalysisSettings())  # order of input rows irrelevant
    assert canonical(a.to_dict()) == canonical(b.to_dict())
    back = Analysis.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a and canonical(back.to_dict()) == canonical(a.to_dict())


def test_settings_validation() -> None:
    from auditor.errors import UserError

    with pytest.raises(UserError):
        AnalysisSettings(alpha=1.5)
    with pytest.raises(UserError):
        AnalysisSettings(key_rule="some")
    with pytest.raises(UserError):
        AnalysisSettings.from_dict({"alpah": 0.1})


@pytest.mark.slow
def test_full_pipeline_false_claim_rate_under_null() -> None:
    """1,000 null endpoints whose keys fire at the decoy rate: claims <= alpha."""
    alpha, endpoints = 0.05, 1000
    s_seq = AnalysisSettings(alpha=alpha, floor=0.01)
    s_fix = AnalysisSettings(alpha=alpha, floor=0.01, sequential=False)
    rng = random.Random(11)
    seq = fix = 0
    for i in range(endpoints):
        rate = (0.0, 0.01, 0.03)[i % 3]
        recs = make_records(endpoint_rows(rng, 30, rate, 0, 0.0, 60, rate))
        seq += analyze(recs, s_seq).verdict == "OWNED"
        fix += analyze(recs, s_fix).verdict == "OWNED"
    tol = 3 * math.sqrt(alpha * (1 - alpha) / endpoints)
    print(f"false claims: sequential {seq}/1000, fixed {fix}/1000")
    assert seq / endpoints <= alpha + tol and fix / endpoints <= alpha + tol


def test_guard_blocking_every_key_like_prompt_is_flagged() -> None:
    """HTTP errors on keys and controls alike, decoys answered: a guard, not a model."""
    rows = [(c, p, s, "error" if c in ("key", "control") else o, h, r)
            for c, p, s, o, h, r in endpoint_rows(random.Random(12), 15, 0.0, 15, 0.0, 30, 0.0)]
    a = analyze(make_records(rows), AnalysisSettings())
    assert a.filtering_flag and a.verdict == "SUSPECTED FILTERING"


def test_innocent_refusals_of_keys_and_controls_not_flagged() -> None:
    rows = [(c, p, s, o, False, c != "decoy") for c, p, s, o, _, _ in
            endpoint_rows(random.Random(13), 20, 0.0, 20, 0.0, 40, 0.0)]
    a = analyze(make_records(rows), AnalysisSettings())
    assert not a.filtering_flag and a.verdict == "NOT DETECTED"
