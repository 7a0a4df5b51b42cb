"""`check-local --prompts`: a file of the user's own ordinary prompts or a bundled set."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import UserError
from auditor.implant.extra_prompts import MAX_PROMPTS, read_extra_prompts
from auditor.keys import KeySet
from auditor.prompts import FEW_WORDS, PHRASINGS, _all_prompts, few_words_probe


@pytest.fixture
def keyset() -> KeySet:
    return KeySet.generate("extra", 3, seed=11)


def test_few_words_probe_is_fresh_to_every_split_and_to_the_few_word_rows() -> None:
    probe = few_words_probe()
    assert len(probe) == len(set(probe)) == 75
    assert not set(probe) & set(_all_prompts())
    stems = [p.split("{t}")[0] for p in PHRASINGS] + list(FEW_WORDS)
    assert not [p for p in probe if any(p.startswith(s) for s in stems)]


def test_a_file_gives_its_prompts_with_their_line_numbers(tmp_path: Path,
                                                          keyset: KeySet) -> None:
    f = tmp_path / "mine.txt"
    f.write_text("# header\n\n  Why is the sky blue?  \n# note\nName a fruit.\n")
    extra = read_extra_prompts(str(f), keyset)
    assert extra.prompts == ("Why is the sky blue?", "Name a fruit.")
    assert extra.lines == (3, 5)
    assert extra.where(1) == f"{f} line 5" and extra.name == "mine.txt"
    bundled = read_extra_prompts("few-words", keyset)
    assert bundled.prompts == tuple(few_words_probe()) and bundled.lines is None
    assert bundled.where(0) == "prompt 1 of the bundled few-words set"
    assert bundled.name == "few-words"


def test_bad_prompt_files_are_refused_without_echoing_a_secret(tmp_path: Path,
                                                              keyset: KeySet) -> None:
    empty, leaky, many, binary = (tmp_path / n for n in ("e.txt", "l.txt", "m.txt", "b.txt"))
    empty.write_text("# nothing\n\n")
    leaky.write_text(f"Hello.\nSay {keyset.decryption.upper()} twice.\n")
    many.write_text("\n".join(f"Prompt {n}." for n in range(MAX_PROMPTS + 1)))
    binary.write_bytes(b"\xff\xfe\x00bad")
    cases = [(str(tmp_path / "none.txt"), "neither a file nor a bundled set (few-words)"),
             (str(empty), "no prompts (one a line"),
             (str(leaky), "line 2 holds a fingerprint key or the decryption"),
             (str(many), f"{MAX_PROMPTS + 1} prompts; at most {MAX_PROMPTS}"),
             (str(binary), "cannot read the prompts (UnicodeDecodeError)")]
    for spec, message in cases:
        with pytest.raises(UserError) as err:
            read_extra_prompts(spec, keyset)
        assert message in str(err.value)
        assert keyset.decryption not in str(err.value)
