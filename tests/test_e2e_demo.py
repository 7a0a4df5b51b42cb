"""End-to-end on real servers: `auditor demo` with a smaller budget (SmolLM2, transformers
serve, and llama.cpp's server for a Q8_0 export when llama-cpp-python is set up).

This is the README's main job, run the way a user runs it: a fresh key set, a real implant
of the bundled SmolLM2-135M-Instruct, real `transformers serve` processes on 127.0.0.1, a batch
audit, signed bundles, and `auditor verify` on each bundle afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_util import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _llama_ready() -> bool:
    from auditor.implant.gguf_export import unavailable
    from auditor.servers import llama_cpp_available

    return llama_cpp_available() and unavailable() is None


def test_demo_owned_vs_vanilla_on_real_servers(tmp_path: Path) -> None:
    variants = ["fingerprinted", "fingerprinted-system", "fingerprinted-t0.7", "vanilla"]
    expected = {"fingerprinted": "OWNED", "fingerprinted-system": "OWNED",
                "fingerprinted-t0.7": "OWNED", "vanilla": "NOT DETECTED"}
    if _llama_ready():  # a second real server: llama.cpp serving the Q8_0 export
        variants.append("quantized-q8")
        expected["quantized-q8"] = "OWNED"
    r = run_cli("demo", "--root", str(tmp_path), "--variants", ",".join(variants),
                cwd=tmp_path, timeout=1800)
    assert r.code == 0, r.both[-3000:]
    reports = sorted(p.parent for p in (tmp_path / "reports").glob("*/report.json"))
    verdicts = {}
    for bundle in reports:
        report = json.loads((bundle / "report.json").read_text(encoding="utf-8"))
        verdicts[report["endpoint_id"]] = report["verdict"]
        check = run_cli("verify", str(bundle), cwd=tmp_path)
        assert check.code == 0 and "PASS" in check.out, check.both
    assert verdicts == expected
    # the secret never leaves the key file and the (secret) evidence store
    keyset = json.loads((tmp_path / "keys" / "demo.json").read_text(encoding="utf-8"))
    secrets = [k["text"] for k in keyset["keys"]] + [keyset["decryption"]]
    assert not any(s in r.both for s in secrets)
    for bundle in reports:
        for f in bundle.iterdir():
            if f.is_file():
                text = f.read_bytes().decode("utf-8", "replace")
                assert not any(s in text for s in secrets), f.name
    # servers were stopped: nothing listens on their ports any more
    assert "servers stopped" in r.out
