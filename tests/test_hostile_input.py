"""Bad input through the real `auditor` entry point: one clear message, exit 2, nothing lost.

Each case runs against a store that already holds a finished audit; afterwards that
evidence must be byte-for-byte the same and still verify, and no half-made audit may appear.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.audit import run_audit
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, build_plan
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.cli_util import CliResult, run_cli
from tests.fakeserver import FakeLLMServer

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, attempt_timeout_s=5.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir with keys/k.json and a store holding one finished audit."""
    root = tmp_path_factory.mktemp("input")
    ks = KeySet.generate("k", 4, seed=5)
    ks.save(root / "keys" / "k.json")
    with FakeLLMServer(fb.fingerprinted(ks)) as srv, \
            EvidenceStore(root / "ev.sqlite") as store:
        ep = EndpointConfig("suspect", f"compat:{srv.url}/v1#m", concurrency=2)
        plan = build_plan("a-existing", ep, ks, "keys/k.json", CampaignSettings())
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        result = asyncio.run(run_audit(plan, ks, store, policy=FAST))
    assert result.status == "completed"
    return root


@pytest.fixture
def work(template: Path, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "w"
    shutil.copytree(template, root)
    yield root


def _snapshot(store: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        recs = db.execute("SELECT audit_id, seq, hash FROM records ORDER BY rowid").fetchall()
        audits = db.execute("SELECT audit_id, status FROM audits ORDER BY audit_id").fetchall()
    finally:
        db.close()
    return recs, audits


def _bad(work: Path, *args: str, needle: str, env: dict[str, str] | None = None,
         timeout: float = 60.0, attempts_allowed: bool = False) -> CliResult:
    """Run a command that must be refused; check the one-message contract and the store."""
    before = _snapshot(work / "ev.sqlite")
    res = run_cli(*args, cwd=work, env=env, timeout=timeout)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == 2, res.both
    assert "Traceback" not in res.both
    assert len(lines) == 1 and lines[0].startswith("error:"), res.both
    assert needle.lower() in lines[0].lower(), lines[0]
    assert res.out.strip() == "", res.out  # no report, no bundle path: just the refusal
    after = _snapshot(work / "ev.sqlite")
    if attempts_allowed:  # the attempts made are evidence too; earlier evidence untouched
        assert after[0][:len(before[0])] == before[0] and set(before[1]) <= set(after[1])
    else:
        assert after == before  # nothing lost, nothing half-made
    with EvidenceStore(work / "ev.sqlite") as store:
        assert all(store.verify(str(aid)).ok for aid, _ in after[1])
    return res


AUDIT = ("audit", "--keys", "keys/k.json", "--store", "ev.sqlite", "--out", "out", "--no-live",
         "--fresh")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_malformed_toml(work: Path) -> None:
    (work / "eps.toml").write_text('[[endpoint]]\nname = "x\nspec = 3\n', encoding="utf-8")
    _bad(work, "batch", "eps.toml", "--keys", "keys/k.json", "--store", "ev.sqlite",
         "--no-live", needle="eps.toml")


@pytest.mark.parametrize(("toml", "needle"), [
    ('[[endpoint]]\nname = "x"\nspec = "compat:http://127.0.0.1:9/v1#m"\nmax_queries = 0\n',
     "max_queries"),
    ('[[endpoint]]\nname = "x"\nspec = "compat:http://127.0.0.1:9/v1#m"\nmax_queries = -4\n',
     "max_queries"),
    ('[[endpoint]]\nname = "x"\nspec = "compat:http://127.0.0.1:9/v1#m"\nconcurrency = 0\n',
     "concurrency"),
    ('[[endpoint]]\nname = "x"\nspec = "compat:http://127.0.0.1:9/v1#m"\nrpm = -1\n', "rpm"),
])
def test_batch_zero_or_negative_budgets(work: Path, toml: str, needle: str) -> None:
    (work / "eps.toml").write_text(toml, encoding="utf-8")
    _bad(work, "batch", "eps.toml", "--keys", "keys/k.json", "--store", "ev.sqlite",
         "--no-live", needle=needle)


@pytest.mark.parametrize(("option", "value"), [
    ("--max-queries", "0"), ("--max-queries", "-3"), ("--samples", "0"),
    ("--concurrency", "0"), ("--rpm", "-1"), ("--timeout", "0"), ("--max-tokens", "0"),
])
def test_audit_zero_or_negative_budgets(work: Path, option: str, value: str) -> None:
    _bad(work, *AUDIT, "compat:http://127.0.0.1:9/v1#m", option, value,
         needle=option.removeprefix("--").split("-")[0])


@pytest.mark.parametrize(("args", "needle"), [
    ((*AUDIT, "--no-such-flag", "compat:http://127.0.0.1:9/v1#m"),
     "no such option: --no-such-flag (see auditor audit --help)"),
    ((*AUDIT, "compat:http://127.0.0.1:9/v1#m", "--samples", "many"),
     "invalid value for '--samples'"),
    (("plan",), "missing option '--keys' (see auditor plan --help)"),
    (("no-such-command",), "no such command 'no-such-command' (see auditor --help)"),
])
def test_usage_errors_are_one_line_too(work: Path, args: tuple[str, ...], needle: str) -> None:
    """What the parser refuses reads like every other refusal: one `error:` line that names
    the command's --help, exit 2."""
    _bad(work, *args, needle=needle)


@pytest.mark.parametrize("args", [(), ("keys",)])
def test_a_bare_group_shows_its_help(work: Path, args: tuple[str, ...]) -> None:
    res = run_cli(*args, cwd=work)
    assert res.code == 2 and "Commands" in res.both and "error:" not in res.both, res.both


def test_unknown_provider(work: Path) -> None:
    _bad(work, *AUDIT, "nosuch:model-x", needle="unknown provider")


def test_missing_credential_variable(work: Path) -> None:
    _bad(work, *AUDIT, "openai:gpt-x", "--credential-env", "HOSTILE_UNSET_KEY_VAR",
         needle="HOSTILE_UNSET_KEY_VAR")


@pytest.mark.slow
def test_unreachable_host(work: Path) -> None:
    port = _closed_port()
    _bad(work, *AUDIT, f"compat:http://127.0.0.1:{port}/v1#m", needle=f"127.0.0.1:{port}",
         timeout=120, attempts_allowed=True)


def test_key_file_readable_by_others(work: Path) -> None:
    (work / "keys" / "k.json").chmod(0o644)
    _bad(work, *AUDIT, "compat:http://127.0.0.1:9/v1#m", needle="chmod 600")


def test_key_file_unreadable(work: Path) -> None:
    (work / "keys" / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    (work / "keys" / "bin.json").chmod(0o600)
    _bad(work, "audit", "compat:http://127.0.0.1:9/v1#m", "--keys", "keys/bin.json",
         "--store", "ev.sqlite", "--no-live", needle="cannot be read")


def test_key_file_is_a_directory(work: Path) -> None:
    (work / "keys" / "dir.json").mkdir(mode=0o700)
    _bad(work, "audit", "compat:http://127.0.0.1:9/v1#m", "--keys", "keys/dir.json",
         "--store", "ev.sqlite", "--no-live", needle="not a regular file")


def test_key_file_missing(work: Path) -> None:
    _bad(work, "audit", "compat:http://127.0.0.1:9/v1#m", "--keys", "keys/none.json",
         "--store", "ev.sqlite", "--no-live", needle="does not exist")


def test_key_file_of_a_newer_version(work: Path) -> None:
    path = work / "keys" / "k.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["version"] = 99
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o600)
    _bad(work, *AUDIT, "compat:http://127.0.0.1:9/v1#m", needle="version 99")


def test_audit_id_that_does_not_exist(work: Path) -> None:
    _bad(work, "audit", "--resume", "a-nosuch", "--store", "ev.sqlite", "--no-live",
         needle="a-nosuch")


def test_store_readable_by_others_is_refused(work: Path) -> None:
    (work / "ev.sqlite").chmod(0o644)
    res = run_cli("audit", "--resume", "a-existing", "--store", "ev.sqlite", "--no-live",
                  cwd=work)
    assert res.code == 2 and "Traceback" not in res.both
    assert "chmod 600" in res.err and res.out.strip() == ""
