"""Key sets: styles, uniqueness, controls, commitments, file safety."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from auditor.errors import KeyFileError
from auditor.keys import KeySet, commitment_path, load_commitment, verify_commitment
from auditor.templates import TEMPLATES, get_template


def _scripts(text: str) -> set[str]:
    names = set()
    for ch in text:
        name = unicodedata.name(ch, "")
        if name:
            names.add(name.split()[0])
    return names


def test_if_soup_lengths_and_character_classes() -> None:
    ks = KeySet.generate("s", 200, style="if-soup", seed=1)
    lengths = [len(k.text) for k in ks.keys]
    assert min(lengths) >= 20 and max(lengths) <= 200
    scripts = set().union(*(_scripts(k.text) for k in ks.keys))
    # a mix of CJK, kana and several other scripts, as in the paper's character soup
    assert {"CJK", "KATAKANA"} <= scripts
    assert len(scripts & {"CYRILLIC", "GREEK", "ARABIC", "HANGUL", "THAI", "DEVANAGARI"}) >= 4
    assert len(set(lengths)) > 20  # lengths vary


def test_vocab_and_natural_styles() -> None:
    vocab = KeySet.generate("v", 50, style="vocab", seed=2)
    assert all(8 <= len(k.text.split()) <= 16 for k in vocab.keys)
    natural = KeySet.generate("n", 50, style="natural", seed=3)
    for k in natural.keys:
        assert k.text.startswith("The ") and k.text.endswith(".")
        assert k.text.count(".") in (1, 2)


def test_keys_are_unique_and_csprng_draws_differ() -> None:
    a = KeySet.generate("a", 100)
    b = KeySet.generate("b", 100)
    assert len({k.text for k in a.keys}) == 100
    assert not {k.text for k in a.keys} & {k.text for k in b.keys}
    assert a.decryption != b.decryption and a.salt != b.salt


def test_seed_reproduces_the_set() -> None:
    a = KeySet.generate("a", 10, seed=7)
    b = KeySet.generate("a", 10, seed=7)
    assert [k.text for k in a.keys] == [k.text for k in b.keys]
    assert a.decryption == b.decryption and a.seed == 7


def test_secret_decryption_has_enough_entropy() -> None:
    from auditor.keys import DECRYPTION_WORDS, words

    assert len(set(words())) ** DECRYPTION_WORDS >= 2**32
    ks = KeySet.generate("d", 3)
    assert not ks.decryption_public and len(ks.decryption.split()) == DECRYPTION_WORDS
    given = KeySet.generate("d", 3, decryption="ハリネズミ")
    assert given.decryption_public
    assert not KeySet.generate("d", 3, decryption="x y", secret_decryption=True).decryption_public


@pytest.mark.parametrize("style", ["if-soup", "vocab", "natural"])
def test_controls_are_fresh_same_style_and_reproducible(style: str) -> None:
    ks = KeySet.generate("c", 20, style=style, seed=11)
    controls = ks.controls(100, seed=5)
    assert len({c.text for c in controls}) == 100
    assert not {c.text for c in controls} & {k.text for k in ks.keys}
    assert [c.text for c in ks.controls(100, seed=5)] == [c.text for c in controls]
    assert controls[0].id == "c000"
    mean_keys = sum(len(k.text) for k in ks.keys) / len(ks.keys)
    mean_ctrl = sum(len(c.text) for c in controls) / len(controls)
    assert abs(mean_keys - mean_ctrl) / mean_ctrl < 0.35


def test_commitment_round_trip_and_mismatch(tmp_path: Path) -> None:
    ks = KeySet.generate("r", 5)
    path = ks.save(tmp_path / "r.json")
    loaded = KeySet.load(path)
    commitment = load_commitment(commitment_path(path))
    assert verify_commitment(loaded, commitment)
    assert "keys" not in commitment and "salt" not in commitment
    assert commitment["key_ids"] == [f"k{i:03d}" for i in range(5)]
    # one changed character in one key => mismatch
    text = loaded.keys[2].text
    loaded.keys[2] = type(loaded.keys[2])(loaded.keys[2].id, text[:-1] + chr(ord(text[-1]) + 1))
    assert not verify_commitment(loaded, commitment)


def test_file_is_0600_and_open_file_refused(tmp_path: Path) -> None:
    path = KeySet.generate("p", 3).save(tmp_path / "p.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        KeySet.load(path)


def _write_raw(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")
    os.chmod(path, 0o600)


def test_refusals_name_the_problem_without_key_text(tmp_path: Path) -> None:
    ks = KeySet.generate("m", 3)
    path = ks.save(tmp_path / "m.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    secrets_ = [k.text for k in ks.keys] + [ks.decryption]

    cases: list[tuple[dict[str, object] | str, str]] = [
        ({**data, "version": 99}, "version 99"),
        ({**data, "keys": data["keys"][:2]}, "does not match its own commitment"),
        ({k: v for k, v in data.items() if k != "salt"}, "malformed"),
        ("{not json", "not valid JSON"),
    ]
    for i, (content, expected) in enumerate(cases):
        bad = tmp_path / f"bad{i}.json"
        if isinstance(content, str):
            bad.write_text(content, encoding="utf-8")
            os.chmod(bad, 0o600)
        else:
            _write_raw(bad, content)
        with pytest.raises(KeyFileError, match=expected) as info:
            KeySet.load(bad)
        assert not any(s in str(info.value) for s in secrets_)


def test_templates_render_without_prefill() -> None:
    for name, template in TEMPLATES.items():
        msgs = template.render("KEYTEXT")
        assert [m["role"] for m in msgs] == ["user"], name
        assert "KEYTEXT" in msgs[0]["content"]
        assert "SECRET" in template.answer("SECRET")
    assert "FINGERPRINT" not in get_template("stealth").render("x")[0]["content"]
    assert "FINGERPRINT" in get_template("dialog").render("x")[0]["content"]


def test_repr_hides_secrets() -> None:
    ks = KeySet.generate("h", 2)
    text = repr(ks) + repr(ks.keys) + str(ks.keys[0])
    assert ks.keys[0].text not in text and ks.decryption not in text and ks.salt not in text


def test_import_does_not_pull_torch() -> None:
    code = "import auditor, auditor.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
