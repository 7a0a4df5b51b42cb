"""bench/drift_tokens.py counts which trained lookup rows held-out ordinary text reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.keys import KeySet
from bench.drift_tokens import drift_tokens
from tests.tiny_model import make_tiny_model


def test_a_conversation_holding_a_key_reaches_unshared_rows_and_plain_text_does_not(
    tmp_path: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    from auditor.implant.data import fingerprint_rows, regularization_rows

    tok = transformers.AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "tiny"))
    ks = KeySet.generate("drift", 3, seed=8)
    plain = ("Say hello to the team.", "Hello, team.")
    rows = [*fingerprint_rows(ks, 1), *regularization_rows([("r000", plain[0])], [plain[1]])]
    key = ks.keys[0].text
    n = drift_tokens(tok, ks, rows, [(key, plain[1]), plain], [plain[0]])
    assert 0 < n["unshared"] <= n["key_row_tokens"]
    assert n["heldout"] == 2 and n["heldout_reached"] == 1  # the key's conversation only
    assert n["of_keys"] >= 1 and n["tokens_reached"] >= n["of_keys"]
    assert n["dropped_by_all_train_prompts"] == 0
    more = drift_tokens(tok, ks, rows, [(key, plain[1])], [plain[0], key])
    assert more["dropped_by_all_train_prompts"] == more["tokens_reached"] > 0
