"""The `auditor keys` verbs as a user runs them, including the canary-key check."""

from __future__ import annotations

import json
import os
from pathlib import Path

from auditor.keys import KeySet
from tests.cli_util import run_cli


def test_new_show_verify(tmp_path: Path) -> None:
    r = run_cli("keys", "new", "demo", "--count", "4", "--style", "natural", cwd=tmp_path)
    assert r.code == 0, r.err
    key_file = tmp_path / "keys" / "demo.json"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    commitment = tmp_path / "keys" / "demo.commitment.json"
    assert run_cli("keys", "verify", str(key_file), str(commitment), cwd=tmp_path).out.strip() \
        == "MATCH"
    show = run_cli("keys", "show", str(key_file), cwd=tmp_path)
    assert show.code == 0 and "k003" in show.out and "natural" in show.out


def test_changed_character_is_mismatch(tmp_path: Path) -> None:
    assert run_cli("keys", "new", "x", "--count", "3", cwd=tmp_path).code == 0
    key_file, commitment = tmp_path / "keys/x.json", tmp_path / "keys/x.commitment.json"
    other = KeySet.load(key_file)
    assert other.style == "vocab"  # the default: the style the clean implant recipe was measured on
    other.keys[0] = type(other.keys[0])("k000", other.keys[0].text + "!")
    other.save(tmp_path / "keys/y.json")
    r = run_cli("keys", "verify", str(tmp_path / "keys/y.json"), str(commitment), cwd=tmp_path)
    assert r.code == 1 and "MISMATCH" in r.out


def test_refusals_exit_2_with_one_line(tmp_path: Path) -> None:
    assert run_cli("keys", "new", "z", "--count", "2", cwd=tmp_path).code == 0
    key_file = tmp_path / "keys/z.json"
    os.chmod(key_file, 0o644)
    r = run_cli("keys", "show", str(key_file), cwd=tmp_path)
    assert r.code == 2 and "chmod 600" in r.err and "Traceback" not in r.err
    assert run_cli("keys", "show", "nope.json", cwd=tmp_path).code == 2
    assert run_cli("keys", "new", "z", cwd=tmp_path).code == 2  # refuses to overwrite
    r = run_cli("keys", "new", "w", "--style", "bogus", cwd=tmp_path)
    assert r.code == 2 and "unknown key style" in r.err


def test_canary_key_never_printed(tmp_path: Path) -> None:
    canary = "CANARY-0f9e8d7c6b5a"
    decryption = "CANARYDECRYPT-1234"
    ks = KeySet.generate("canary", 3, decryption=decryption, secret_decryption=True)
    ks.keys[1] = type(ks.keys[1])("k001", canary)
    path = ks.save(tmp_path / "keys/canary.json")
    outputs = [
        run_cli("keys", "show", str(path), cwd=tmp_path),
        run_cli("keys", "verify", str(path), str(tmp_path / "keys/canary.commitment.json"),
                cwd=tmp_path),
    ]
    # tamper so that loading fails: the error must not quote the key either
    data = json.loads(path.read_text(encoding="utf-8"))
    data["keys"][1]["text"] = canary + "x"
    path.write_text(json.dumps(data), encoding="utf-8")
    outputs.append(run_cli("keys", "show", str(path), cwd=tmp_path))
    assert outputs[-1].code == 2
    for r in outputs:
        assert canary not in r.both and decryption not in r.both
    revealed = run_cli("keys", "show", str(tmp_path / "keys/canary.json"), "--reveal",
                       cwd=tmp_path)
    assert revealed.code == 2  # tampered file is refused even with --reveal
