"""`auditor verify | report | plan` as a user runs them (real subprocess, real exit codes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor import stats
from auditor.bundle import write_bundle
from tests.test_report import make_report, owned_records


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "auditor.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    records = owned_records()
    report = make_report(records)
    return write_bundle(tmp / "reports" / "a1", report, records, report.commitment,
                        signing_key=tmp / "keys" / "signing.key")


@pytest.mark.slow
def test_verify_pass_fail_and_missing(bundle: Path) -> None:
    ok = _run("verify", str(bundle))
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stdout + ok.stderr
    html = bundle / "report.html"
    original = html.read_bytes()
    try:
        html.write_bytes(original[:-1] + bytes([original[-1] ^ 0x20]))
        bad = _run("verify", str(bundle))
        assert bad.returncode == 1
        assert "FAIL" in bad.stdout and "report.html does not match" in bad.stdout
    finally:
        html.write_bytes(original)
    missing = _run("verify", str(bundle.parent / "nope"))
    assert missing.returncode == 2 and "not a bundle directory" in missing.stderr


@pytest.mark.slow
def test_report_rerenders_bundle(bundle: Path) -> None:
    out = _run("report", str(bundle))
    assert out.returncode == 0, out.stderr
    assert "OWNED" in out.stdout and "Per-key hits" in out.stdout
    assert _run("report", str(bundle.parent)).returncode == 2


@pytest.mark.slow
def test_plan_prints_queries_needed() -> None:
    out = _run("plan", "--keys", "40", "--fsr", "0.3", "--alpha", "0.01", "--p0", "0.01")
    assert out.returncode == 0, out.stderr
    need = stats.queries_needed(0.3, 0.01, 0.01)
    assert need is not None and f"│ {need} " in out.stdout
    assert _run("plan", "--keys", "40", "--fsr", "1.5").returncode == 2
