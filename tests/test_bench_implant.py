"""bench/implant.py: it keeps what a method finished when its process is killed mid-run, and
runs embedding through a shadow as a row of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.implant import ROOT, _bounded, _partial_row, _save_partial


def test_partial_rows_follow_the_finished_ones(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text(json.dumps([{"method": "sft", "implant": {"steps": 3}}]))
    _save_partial(out, {"method": "lora", "implant": {"steps": 5}})
    _save_partial(out, {"method": "lora", "implant": {"steps": 5}, "attacks": {"temperature": {}}})
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["sft", "lora"]  # the earlier partial row replaced
    assert "partial" not in rows[0] and rows[1]["partial"] is True
    assert rows[1]["attacks"] == {"temperature": {}} and rows[1]["peak_rss_mb"] > 0
    saved = _partial_row(out, "lora")
    assert saved["implant"] == {"steps": 5} and "method" not in saved
    assert _partial_row(out, "embedding") == {}


def test_false_trigger_cells_carry_their_bound() -> None:
    """A row from check-local shows its exact 95 % bound; an older row without one, the rate."""
    chk = {"nearmiss_false_trigger": 0.0, "nearmiss_upper95": 0.0295}
    assert _bounded(chk, "nearmiss_false_trigger", "nearmiss_upper95") == "0.0% (<= 2.9%)"
    assert _bounded({"ordinary_false_trigger": 0.01}, "ordinary_false_trigger",
                    "ordinary_upper95") == "1.0%"


def test_nothing_saved_reads_as_empty(tmp_path: Path) -> None:
    _save_partial(None, {"method": "sft"})  # no --json-out: nothing written
    assert _partial_row(None, "sft") == {}
    out = tmp_path / "bench.json"
    assert _partial_row(out, "sft") == {}
    out.write_text("[]")
    assert _partial_row(out, "sft") == {}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "implant.py"), *args],
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_shadow_without_a_lookup_method_is_refused() -> None:
    proc = _bench("--methods", "sft,lora", "--shadow", "models/shadow")
    assert proc.returncode == 2
    assert "--shadow applies to --methods embedding or fadapter only" in proc.stderr
    for alone in (["--shadow-scale", "1.5"], ["--shadow-weight", "2"]):
        proc = _bench("--methods", "fadapter", *alone)
        assert proc.returncode == 2
        assert "--shadow-weight and --shadow-scale need --shadow" in proc.stderr
    three = _bench("--methods", "fadapter", "--shadow", "a", "--shadow", "b",
                   *["--shadow-scale", "1.5"] * 3)
    assert three.returncode == 2 and "one per --shadow" in three.stderr
    twice = _bench("--methods", "fadapter", "--shadow", "a", "--shadow", "./a")
    assert twice.returncode == 2 and "the same --shadow is given twice" in twice.stderr
    far = _bench("--methods", "fadapter", "--shadow", "a", "--shadow-scale", "4")
    assert far.returncode == 2 and "--shadow-scale must be above 0 and at most 3" in far.stderr
    unused = _bench("--methods", "fadapter", "--attacks", "temperature", "--user-lr", "1e-3")
    assert unused.returncode == 2
    assert "--user-lr and --user-set apply to the user attacks" in unused.stderr
    rank = _bench("--methods", "fadapter", "--attacks", "user-sft", "--user-lora-rank", "4")
    assert rank.returncode == 2 and "--user-lora-rank applies to user-lora only" in rank.stderr
    low = _bench("--methods", "fadapter", "--attacks", "user-sft", "--user-lr", "0")
    assert low.returncode == 2 and "the user's --user-lr must be above 0" in low.stderr
    nowhere = _bench("--methods", "fadapter", "--prompts", "few-word")
    assert nowhere.returncode == 2 and "neither a file nor a bundled set" in nowhere.stderr


@pytest.mark.slow
def test_embedding_through_a_shadow_is_its_own_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole bench on the tiny model: embedding through a shadow twice (as tuned and
    1.5x: repeated flags reach the child), checked and attacked, the LoRA as another user's."""
    from auditor.implant.shadow import make_shadow
    from tests.tiny_model import make_tiny_model

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    tiny = make_tiny_model(tmp_path / "tiny")
    shadow = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    out = tmp_path / "bench.json"
    proc = _bench("--base", str(tiny), "--methods", "embedding", "--attacks",
                  "temperature,user-lora", "--user-rows", "8", "--user-epochs", "1",
                  "--user-lr", "1e-3", "--user-set", "tasks", "--user-seed", "2",
                  "--user-lora-rank", "4",
                  "--shadow", str(shadow), "--shadow", str(shadow), "--shadow-scale", "1",
                  "--shadow-scale", "1.5", "--keys", "2", "--epochs", "2", "--controls", "4",
                  "--ordinary", "4", "--samples", "1", "--lookup-rows", "fingerprint",
                  "--prompts", "few-words", "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedding+2 shadows" in proc.stdout  # the table's row
    [row] = json.loads(out.read_text())
    assert row["method"] == "embedding+2 shadows" and "partial" not in row
    record = json.loads((shadow / "shadow.json").read_text())  # each its half and its scale
    assert row["shadow"] == [{"weight": 0.5, **record}, {"weight": 0.5, **record, "scale": 1.5}]
    assert row["implant"]["epochs"] == 2 and row["implant"]["steps"] > 0
    assert 0.0 <= row["check"]["nearmiss_false_trigger"] <= row["check"]["nearmiss_upper95"]
    assert row["check"]["n_extra"] == 75 and "--prompts FT" in proc.stdout
    attack = row["attacks"]["temperature"]
    assert attack["skipped"] is None and 0.0 <= attack["fsr"] <= 1.0
    lora = row["attacks"]["user-lora"]
    assert 0.0 <= lora["fsr"] <= 1.0 and "fsr_published_layers" in lora["detail"]
    assert {k: lora["detail"][k] for k in ("rows", "set", "seed", "lr", "lora_rank")} == {
        "rows": 8, "set": "tasks", "seed": 2, "lr": 1e-3, "lora_rank": 4}
    assert "user-lora: 8 tasks rows of seed 2 x 1, lr 0.001, rank 4" in proc.stdout
