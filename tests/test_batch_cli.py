"""`auditor batch` in a subprocess: per-endpoint bundles, batch report, exit codes; live view."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from auditor.audit import Progress
from auditor.bundle import verify_bundle
from auditor.keys import KeySet
from auditor.live import LiveView, verdict_markup
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, openai_error

REPO = Path(__file__).resolve().parents[1]


def _batch(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from auditor.cli import main; main()",
                           "batch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"})


@pytest.mark.slow
def test_batch_cli_reports_each_endpoint(tmp_path: Path) -> None:
    ks = KeySet.generate("batch", 10, seed=8)
    ks.save(tmp_path / "keys" / "batch.json")
    with FakeLLMServer(fb.fingerprinted(ks)) as owned, FakeLLMServer(fb.vanilla()) as plain:
        (tmp_path / "endpoints.toml").write_text(f"""
[defaults]
keys = "keys/batch.json"
concurrency = 4

[[endpoint]]
name = "suspect-a"
provider = "compat"
model = "fake-model"
base_url = "{owned.url}/v1"

[[endpoint]]
name = "suspect-b"
spec = "compat:{plain.url}/v1#fake-model"
""", encoding="utf-8")
        proc = _batch(["endpoints.toml", "--store", "ev.sqlite", "--out", "bundles",
                       "--no-live"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "suspect-a" in proc.stdout and "suspect-b" in proc.stdout
    bundles = sorted((tmp_path / "bundles").iterdir())
    assert len(bundles) == 2
    verdicts = {}
    for b in bundles:
        assert verify_bundle(b).ok
        report = json.loads((b / "report.json").read_text())
        assert report["correction"] == "holm" and report["batch_size"] == 2
        # each endpoint stops at alpha/m, so its claim survives Holm at alpha
        assert report["alpha"] == 0.01
        assert report["analysis"]["settings"]["alpha"] == pytest.approx(0.005)
        verdicts[report["endpoint_id"]] = report["verdict"]
    assert verdicts == {"suspect-a": "OWNED", "suspect-b": "NOT DETECTED"}
    assert all(k.text not in proc.stdout + proc.stderr for k in ks.keys)


@pytest.mark.slow
def test_batch_cli_exit_codes(tmp_path: Path) -> None:
    ks = KeySet.generate("batch", 4, seed=8)
    ks.save(tmp_path / "keys" / "batch.json")
    (tmp_path / "bad.toml").write_text("[[endpoint]]\nspec='compat:m'\nrpm='fast'\n")
    bad = _batch(["bad.toml", "--keys", "keys/batch.json"], tmp_path)
    assert bad.returncode == 2 and "bad.toml" in bad.stderr and "'rpm'" in bad.stderr
    with FakeLLMServer(lambda req: openai_error(403, "forbidden")) as denied:
        (tmp_path / "e.toml").write_text(
            f"[[endpoint]]\nname='denied'\nspec='compat:{denied.url}/v1#m'\n")
        dry = _batch(["e.toml", "--keys", "keys/batch.json", "--dry-run"], tmp_path)
        assert dry.returncode == 0 and "denied" in dry.stdout and not denied.requests
        failed = _batch(["e.toml", "--keys", "keys/batch.json", "--no-live", "--store",
                         "ev.sqlite", "--out", "bundles"], tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "ERROR" in failed.stdout and "permission_denied" in failed.stdout


def test_live_view_plain_mode_prints_finished_endpoints() -> None:
    buf = io.StringIO()
    view = LiveView(Console(file=buf, width=120), enabled=True)  # not a terminal: plain
    with view:
        view.update(Progress("ep-a", "a1", total=10, done=3, verdict="NOT DETECTED"))
        view.update(Progress("ep-a", "a1", total=10, done=10, status="completed",
                             verdict="OWNED"))
        view.update(Progress("ep-b", "a2", total=10, done=2, status="error", error="auth"))
    lines = buf.getvalue().splitlines()
    assert lines == ["ep-a: 10/10 queries, OWNED", "ep-b: 2/10 queries, ERROR"]
    assert "OWNED?" in verdict_markup("OWNED", "running")
    assert "ERROR" in verdict_markup("NOT DETECTED", "error")


def test_live_view_terminal_mode_tracks_bars() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True)
    with LiveView(console) as view:
        view.update(Progress("ep-a", "a1", total=4, done=4, status="completed",
                             verdict="OWNED"))
        view.update(Progress("ep-b", "a2", total=4, done=1))
    out = buf.getvalue()
    assert "ep-a" in out and "ep-b" in out and "1/2 endpoints done, 1 owned" in out
