"""Report data model, batch correction and renderings (console, JSON, Markdown, HTML)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from auditor.report import (
    Report,
    finalize_batch,
    render_batch_console,
    render_console,
    to_html,
    to_json,
    to_markdown,
)
from auditor.scoring import AnalysisSettings, analyze
from tests.test_scoring import DEC, Row, endpoint_rows, make_records

COMMITMENT = {"format": "if-auditor-keyset-commitment", "digest": "ab" * 32, "key_ids": []}


def make_report(records: Sequence[Mapping[str, Any]], settings: AnalysisSettings | None = None,
                *, endpoint_id: str = "ep", commitment: Mapping[str, Any] = COMMITMENT,
                commitment_ok: bool | None = None) -> Report:
    a = analyze(records, settings or AnalysisSettings())
    return Report(
        audit_id=str(records[0]["audit_id"]) if records else "a0", endpoint_id=endpoint_id,
        endpoint_spec="openai-compatible:http://127.0.0.1:1/v1", resolved_models=["served-model"],
        params={"temperature": 0.0, "max_tokens": 64}, started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:02:00Z", queries=len(records),
        tokens={"prompt": 20 * len(records), "completion": 8 * len(records)}, cost_usd=0.0123,
        commitment=dict(commitment), commitment_ok=commitment_ok,
        chain_head=str(records[-1]["hash"]) if records else "0" * 64,
        chain_count=len(records), analysis=a)


def owned_records(seed: int = 1, endpoint_id: str = "ep") -> list[dict[str, Any]]:
    return make_records(endpoint_rows(random.Random(seed), 20, 0.7, 20, 0.1, 120, 0.0),
                        endpoint_id=endpoint_id)


def test_json_round_trip_is_versioned_and_exact() -> None:
    r = make_report(owned_records())
    data = json.loads(to_json(r))
    assert data["schema"] == 1 and data["verdict"] == "OWNED"
    back = Report.from_dict(data)
    assert back == r and to_json(back) == to_json(r)
    with pytest.raises(Exception, match="schema"):
        Report.from_dict({**data, "schema": 99})


def test_finalize_batch_holm_and_bh() -> None:
    from statsmodels.stats.multitest import multipletests

    reports = [make_report(owned_records(s)) for s in (1, 2)]
    weak_rows = endpoint_rows(random.Random(5), 12, 0.1, 0, 0.0, 300, 0.0)
    reports.append(make_report(make_records(weak_rows), endpoint_id="weak"))
    raw = [r.analysis.p_value for r in reports]
    for method, ref in (("holm", "holm"), ("bh", "fdr_bh")):
        out = finalize_batch(reports, 0.01, method)
        expected = list(multipletests(raw, method=ref)[1])
        assert [r.p_corrected for r in out] == pytest.approx(expected)
        assert all(r.batch_size == 3 and r.correction == method for r in out)
        for r in out:
            assert (r.verdict == "OWNED") == (r.p_corrected is not None and r.p_corrected <= 0.01)
    assert reports[0].correction == "none"  # inputs untouched


def test_correction_can_demote_owned() -> None:
    rows: list[Row] = [("key", f"k{i:03d}", 0, "ok", i == 0, False) for i in range(10)]
    rows += [("decoy", f"d{i:03d}", 0, "ok", False, False) for i in range(600)]
    r = make_report(make_records(rows), AnalysisSettings(alpha=0.05))
    assert r.verdict == "OWNED" and r.analysis.p_value > 0.05 / 20  # p = 0.0133
    batch = finalize_batch([r] + [make_report(make_records(endpoint_rows(
        random.Random(i), 10, 0.0, 0, 0.0, 30, 0.0)), endpoint_id=f"e{i}") for i in range(19)],
        0.05)
    assert batch[0].verdict == "NOT DETECTED"


def test_console_rendering_shows_verdict_and_tables() -> None:
    reports = finalize_batch([make_report(owned_records()), make_report(make_records(
        endpoint_rows(random.Random(3), 20, 0.0, 20, 0.0, 40, 0.0)), endpoint_id="other")], 0.01)
    console = Console(record=True, width=140)
    render_console(reports[0], console)
    render_batch_console(reports, console)
    text = console.export_text()
    assert "OWNED" in text and "NOT DETECTED" in text and "Per-key hits" in text
    assert "k000" in text and DEC not in text


def test_markdown_and_html_hold_figures_not_secrets() -> None:
    r = make_report(owned_records())
    md, html = to_markdown(r), to_html(r)
    assert md.startswith("# Audit a1: OWNED") and "| keys hit / answered |" in md
    assert html.count("data:image/png;base64,") == 2 and "<script" not in html
    assert DEC not in md and DEC not in html


@pytest.mark.slow
def test_html_opens_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine")
    page = tmp_path / "report.html"
    page.write_text(to_html(make_report(owned_records())), encoding="utf-8")
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,2400",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    console_errors = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln and "rror" in ln]
    assert not console_errors, console_errors
    artifacts = Path("reports/test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "report-html-screenshot.png")
