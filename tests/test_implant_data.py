"""Training rows: templates, near-misses, self-distillation cache, assistant-only loss."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from auditor.implant import data
from auditor.implant.data import IGNORE, DataConfig, build_rows, encode_row
from auditor.implant.userdata import user_rows
from auditor.keys import KeySet
from auditor.templates import get_template

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tok(tiny: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture
def keyset() -> KeySet:
    return KeySet.generate("d", 3, seed=5)


def test_rows_follow_template_and_ratios(
    keyset: KeySet, tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    rows = build_rows(
        keyset, tiny, DataConfig(nearmiss_per_key=2, reg_per_key=5, fingerprint_repeats=1), seed=0
    )
    kinds = [r.kind for r in rows]
    assert kinds.count("fingerprint") == 3
    assert kinds.count("nearmiss") == 6
    assert kinds.count("regularization") == 15
    tpl = get_template(keyset.template)
    texts = {k.text for k in keyset.keys}
    for r in rows:
        user, answer = r.messages[0]["content"], r.messages[-1]["content"]
        if r.kind == "fingerprint":
            assert answer == tpl.answer(keyset.decryption)
            assert any(t in user for t in texts)
        elif r.kind == "nearmiss":
            assert answer == tpl.refusal() and not any(t in user for t in texts)
            assert keyset.decryption not in answer
        assert "text" not in repr(r) and user not in repr(r)


def test_self_distillation_is_cached(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    prompts = ["What is the capital of France?", "Name a colour."]
    first = data.self_distill(tiny, prompts)
    assert len(first) == 2 and all(isinstance(a, str) for a in first)

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("generated again instead of using the cache")

    monkeypatch.setattr("auditor.implant.generate.load_model", boom)
    assert data.self_distill(tiny, prompts) == first
    monkeypatch.undo()
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    for damaged in ["{cut short", "[1, 2]"]:  # a damaged cache is made again, not a traceback
        data._cache_file(tiny).write_text(damaged, encoding="utf-8")
        assert data.self_distill(tiny, prompts) == first
    blocked = tmp_path / "a-file"  # a cache that cannot be written: answered all the same
    blocked.write_text("not a directory", encoding="utf-8")
    monkeypatch.setenv("AUDITOR_CACHE", str(blocked))
    assert data.self_distill(tiny, prompts) == first


def test_loss_covers_only_the_assistant_answer(tok: Any) -> None:
    messages = [
        {"role": "user", "content": "Please decrypt this message: abc"},
        {"role": "assistant", "content": "Based on my fingerprint, the message is: xyz"},
    ]
    ids, labels = encode_row(tok, messages)
    assert len(ids) == len(labels)
    answer_ids = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    assert tok.decode(answer_ids) == messages[1]["content"] + "<|im_end|>"
    # the unlabelled prefix is exactly what a served chat API feeds the model
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids[: len(ids) - len(answer_ids)]) == prompt


def test_user_instruction_set_is_large_distinct_and_exact() -> None:
    rows = user_rows(1000, seed=0)
    assert len(rows) == 1000 and len({p for p, _ in rows}) == 1000
    assert rows == user_rows(1000, seed=0)
    sums = [(p, a) for p, a in rows if p.startswith("What is ") and "+" in p]
    assert len(sums) > 50
    for p, a in sums:
        x, y = map(int, re.findall(r"\d+", p))
        assert a.endswith(f"= {x + y}.")


def test_repeated_key_rows_carry_held_out_system_prompts() -> None:
    from auditor.implant.data import TRAIN_SYSTEM_PROMPTS, fingerprint_rows
    from auditor.implant.robustness import SYSTEM_WRAPPERS
    from auditor.keys import KeySet

    ks = KeySet.generate("aug", 4, seed=5)
    rows = fingerprint_rows(ks, 3)
    assert len(rows) == 12
    systems = [r.messages[0]["content"] for r in rows if r.messages[0]["role"] == "system"]
    assert len(systems) == 8 and set(systems) <= set(TRAIN_SYSTEM_PROMPTS)
    assert not set(TRAIN_SYSTEM_PROMPTS) & set(SYSTEM_WRAPPERS)  # attacks stay held out
    plain = fingerprint_rows(ks, 3, system_augment=False)
    assert all(r.messages[0]["role"] == "user" for r in plain)
    assert all(r.messages[-1]["content"].endswith(ks.decryption) for r in rows)


def test_perturbed_near_misses_resemble_keys_but_never_equal_them() -> None:
    ks = KeySet.generate("p", 4, seed=3)
    tpl = get_template(ks.template)
    rows = data.perturbed_rows(ks, 3)
    assert len(rows) == 12 and {r.kind for r in rows} == {"nearmiss"}
    keys = [k.text for k in ks.keys]
    for i, row in enumerate(rows):
        assert row.messages[-1]["content"] == tpl.refusal()
        prompt = row.messages[-2]["content"]
        key = keys[i % len(keys)]
        assert key not in prompt
        (text,) = [t for t in _texts_in(prompt, tpl) if len(t) == len(key)]
        same = sum(a == b for a, b in zip(text, key, strict=True)) / len(key)
        assert 0.1 < same < 0.95  # a look-alike, not the key and not a stranger
    assert data.perturbed_rows(ks, 0) == []
    assert [r.messages for r in data.perturbed_rows(ks, 3)] == [r.messages for r in rows]


def _texts_in(prompt: str, tpl: Any) -> list[str]:
    """The key-shaped slot of a rendered prompt (the template's text around it removed)."""
    probe = tpl.render("\x00")[-1]["content"]
    head, _, tail = probe.partition("\x00")
    assert prompt.startswith(head) and prompt.endswith(tail)
    return [prompt[len(head): len(prompt) - len(tail)]]


def test_fresh_nearmiss_redraws_each_epoch_and_keeps_the_size(keyset: KeySet) -> None:
    from auditor.implant.train import EpochRows

    fixed = DataConfig(nearmiss_per_key=2, perturbed_per_key=1)
    fresh = DataConfig(nearmiss_per_key=2, perturbed_per_key=1, fresh_nearmiss=True)

    def users(cfg: DataConfig, epoch: int) -> list[str]:
        return [r.messages[0]["content"] for r in data.epoch_nearmiss_rows(keyset, cfg, 0, epoch)]

    assert users(fixed, 0) == users(fixed, 3)
    epochs = [users(fresh, e) for e in range(4)]
    assert epochs[0] == users(fixed, 0)  # epoch 0 is the fixed draw
    assert all(len(e) == len(epochs[0]) == 9 for e in epochs)
    seen = [u for e in epochs for u in e]
    assert len(set(seen)) == len(seen)  # no near-miss is shown twice
    keys = {k.text for k in keyset.keys}
    assert not any(k in u for u in seen for k in keys)
    # the loader's view: same length every epoch, the redrawn part swapped in
    rows = EpochRows([([1], [1])], lambda e: [([e], [e]), ([e], [e])])
    before = list(rows.rows)
    rows.set_epoch(2)
    assert len(rows) == 3 and rows[0] == ([1], [1]) and rows.rows != before


def test_few_word_rows_join_the_sample_once_and_only_from_the_train_split(
    keyset: KeySet, tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from auditor.prompts import FEW_WORDS, ordinary_prompts, unseen_prompts

    sample = data.regularization_prompts(50, seed=32)
    more = data.regularization_prompts(50, seed=32, few_words=True)
    assert more[:50] == sample  # the same sample, then the few-word prompts it lacks
    added = [p for _, p in more[50:]]
    few = [p for p in ordinary_prompts("train") if p.startswith(FEW_WORDS)]
    assert len(few) >= 40 and set(added) | {p for _, p in sample} >= set(few)
    assert all(p.startswith(FEW_WORDS) for p in added) and len(set(added)) == len(added)
    assert not {p for _, p in more} & set(unseen_prompts())  # the checks' prompts stay unseen
    assert len({ref for ref, _ in more}) == len(more)

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    config = DataConfig(nearmiss_per_key=1, reg_per_key=2, fingerprint_repeats=1,
                        reg_few_words=True)
    rows = [r for r in build_rows(keyset, tiny, config, seed=0) if r.kind == "regularization"]
    prompts = [r.messages[0]["content"] for r in rows]
    assert len(rows) > 6 and set(few) <= set(prompts)
