"""Canaries: a key text, a decryption and an API credential that must never come out.

A full `auditor audit` runs in a subprocess with every logger at DEBUG (root, openai,
anthropic, httpx, httpcore; plus the SDKs' own OPENAI_LOG / ANTHROPIC_LOG) against a hostile
server that echoes the credential and the prompt back in its error messages. None of the
canaries may appear in stdout, stderr, the log file, or a bundle written without --reveal.
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.errors import KeyFileError
from auditor.keys import Key, KeySet
from tests import fakes_behaviour as fb
from tests.fakeserver import (
    FakeLLMServer,
    FakeReply,
    FakeRequest,
    Responder,
    anthropic_error,
    openai_error,
)

CANARY_KEY = "CANARYKEYqv7Zx2Lw9ハリ"
CANARY_DECRYPTION = "canarydecrypt plumtree vortex"
CANARY_CREDENTIAL = "sk-CANARYcred-5d1e8f3a9b7c2460"
CANARIES = (CANARY_KEY, CANARY_DECRYPTION, CANARY_CREDENTIAL)

RUNNER = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, filename=sys.argv[1], filemode="a",
                    format="%(name)s %(levelname)s %(message)s")
console = logging.StreamHandler(sys.stderr)
console.setLevel(logging.DEBUG)
logging.getLogger().addHandler(console)
for name in ("openai", "anthropic", "httpx", "httpcore", "httpx2", "httpcore2", "auditor",
             "providers", "asyncio"):
    logging.getLogger(name).setLevel(logging.DEBUG)
sys.argv = ["auditor", *sys.argv[2:]]
from auditor.cli import main
main()
"""


def canary_keyset() -> KeySet:
    base = KeySet.generate("canary", 6, seed=17)
    keys = [Key("k000", CANARY_KEY), *base.keys[1:]]
    return KeySet(name="canary", style=base.style, template=base.template, keys=keys,
                  decryption=CANARY_DECRYPTION, decryption_public=False, salt=base.salt,
                  seed=None, created=base.created)


def hostile(keyset: KeySet) -> Responder:
    """A fingerprinted model whose every third reply is a 503 echoing credential and prompt."""
    model = fb.fingerprinted(keyset)
    counter = itertools.count()

    def respond(req: FakeRequest) -> FakeReply:
        auth = req.headers.get("authorization") or req.headers.get("x-api-key", "")
        if next(counter) % 3 == 0:
            message = f"busy; you sent {auth} asking {req.prompt}"
            if req.path.endswith("/messages"):
                return anthropic_error(503, "api_error", message)
            return openai_error(503, message)
        reply = model(req)
        assert isinstance(reply, FakeReply)
        return reply

    return respond


def _spec(kind: str, url: str) -> list[str]:
    if kind == "openai":
        return ["openai:fake-gpt", "--base-url", url + "/v1"]
    if kind == "anthropic":
        return ["anthropic:fake-claude", "--base-url", url]
    return [f"compat:{url}/v1#fake", "--credential-env", "CANARY_COMPAT_KEY"]


def _run(work: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": CANARY_CREDENTIAL,
           "ANTHROPIC_API_KEY": CANARY_CREDENTIAL, "CANARY_COMPAT_KEY": CANARY_CREDENTIAL,
           "OPENAI_LOG": "debug", "ANTHROPIC_LOG": "debug", "COLUMNS": "4000",
           "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, str(work / "debug.log"), *args],
                          cwd=work, env=env, capture_output=True, text=True, timeout=180)


def _leaks(text: str) -> list[str]:
    squeezed = "".join(text.split())  # a wrapped line must not hide a canary
    return [c for c in CANARIES if c in text or "".join(c.split()) in squeezed]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openai", "anthropic", "compat"])
def test_no_canary_in_output_logs_or_bundle(tmp_path: Path, kind: str) -> None:
    ks = canary_keyset()
    ks.save(tmp_path / "keys" / "c.json")
    with FakeLLMServer(hostile(ks)) as srv:
        proc = _run(tmp_path, ["audit", *_spec(kind, srv.url), "--keys", "keys/c.json",
                               "--store", "ev.sqlite", "--out", "out", "--no-live", "--fresh",
                               "--no-sequential"])
        answered = [r for r in srv.requests if CANARY_KEY in r.prompt]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert answered, "the canary key was never sent: the test would prove nothing"
    log = (tmp_path / "debug.log").read_text(encoding="utf-8", errors="replace")
    assert "HTTP Request" in log or "Request" in log  # the SDK/httpx debug logs did run
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr), ("log", log)):
        assert not _leaks(text), f"{name} leaks {_leaks(text)}"
    bundles = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "evidence.jsonl" for p in bundles)
    for path in bundles:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert not _leaks(text), f"{path.name} leaks {_leaks(text)}"
    # the credential never reaches the evidence store either (key text may: it is secret)
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("ev.sqlite*"))
    assert CANARY_CREDENTIAL.encode() not in store_bytes


def test_revealed_bundle_does_carry_the_canary(tmp_path: Path) -> None:
    """Positive control: the same search finds the canaries when they are meant to be there."""
    ks = canary_keyset()
    ks.save(tmp_path / "keys" / "c.json")
    with FakeLLMServer(fb.fingerprinted(ks)) as srv:
        proc = _run(tmp_path, ["audit", *_spec("compat", srv.url), "--keys", "keys/c.json",
                               "--store", "ev.sqlite", "--out", "out", "--no-live", "--fresh",
                               "--no-sequential", "--reveal"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    revealed = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert CANARY_KEY.encode() in revealed and CANARY_DECRYPTION.encode() in revealed
    assert CANARY_CREDENTIAL.encode() not in revealed
    keyset_files = list((tmp_path / "out").rglob("keyset.json"))
    assert keyset_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keyset_files)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "compat"])
async def test_final_exception_text_carries_no_canary(kind: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry layer's last error, its cause chain and its body, after echoed secrets."""
    import traceback

    from auditor.retry import RetryPolicy, generate_with_retry
    from providers.base import Message, ProviderError, SampleParams
    from providers.registry import make_provider

    monkeypatch.setenv("OPENAI_API_KEY", CANARY_CREDENTIAL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY_CREDENTIAL)
    monkeypatch.setenv("CANARY_COMPAT_KEY", CANARY_CREDENTIAL)

    def always_busy(req: FakeRequest) -> FakeReply:
        auth = req.headers.get("authorization") or req.headers.get("x-api-key", "")
        return openai_error(503, f"busy: {auth} / {req.prompt}")

    with FakeLLMServer(always_busy) as srv:
        spec, *rest = _spec(kind, srv.url)
        opts = dict(zip(rest[::2], rest[1::2], strict=True))
        provider = make_provider(spec, base_url=opts.get("--base-url"),
                                 credential_env=opts.get("--credential-env"))
        policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)
        with pytest.raises(ProviderError) as info:
            await generate_with_retry(provider, [Message("user", CANARY_KEY)], SampleParams(),
                                      policy)
        await provider.aclose()
    err = info.value
    text = "\n".join([str(err), repr(err), err.body or "", repr(err.to_dict()),
                      "".join(traceback.format_exception(err))])
    assert err.status == 503 and not _leaks(text), _leaks(text)


OPEN_MODES = [m for m in range(0o000, 0o100) if m]  # any group or other bit


@pytest.mark.parametrize("mode", OPEN_MODES, ids=lambda m: f"0{0o600 | m:o}")
def test_key_file_wider_than_0600_is_refused(tmp_path: Path, mode: int) -> None:
    path = canary_keyset().save(tmp_path / "c.json")
    path.chmod(0o600 | mode)
    with pytest.raises(KeyFileError) as info:
        KeySet.load(path)
    text = str(info.value) + repr(info.value)
    assert "chmod 600" in text and not _leaks(text)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    path = canary_keyset().save(tmp_path / "c.json")
    path.chmod(mode)
    assert KeySet.load(path).key("k000").text == CANARY_KEY
    assert not _leaks(repr(KeySet.load(path)))
