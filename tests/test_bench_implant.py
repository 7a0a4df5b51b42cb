"""bench/implant.py keeps what a method finished when its process is killed mid-run."""

from __future__ import annotations

import json
from pathlib import Path

from bench.implant import _partial_row, _save_partial


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


def test_nothing_saved_reads_as_empty(tmp_path: Path) -> None:
    _save_partial(None, {"method": "sft"})  # no --json-out: nothing written
    assert _partial_row(None, "sft") == {}
    out = tmp_path / "bench.json"
    assert _partial_row(out, "sft") == {}
    out.write_text("[]")
    assert _partial_row(out, "sft") == {}
