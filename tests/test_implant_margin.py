"""The exact sampled fire chance: transformers' own warpers and step-by-step decoding agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from auditor.keys import KeySet
from tests.tiny_model import make_tiny_model

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (0.7, 0.9), (1.3, 0.5)])
def test_sampling_probs_match_transformers_warpers(temperature: float, top_p: float) -> None:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from auditor.implant.margin import sampling_probs

    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(3)) * 4
    warp = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
    expected = torch.softmax(warp(torch.zeros(5, 1, dtype=torch.long), logits.clone()), dim=-1)
    got = sampling_probs(logits, temperature, top_p)
    assert torch.allclose(got, expected, atol=1e-6)
    assert bool(((got > 0).sum(-1) < 300).all()) == (top_p < 1.0)


def _stepwise_logprob(model: object, tok: object, keyset: KeySet, key_text: str,
                      temperature: float) -> float:
    """Feed the growing prefix one token at a time, unpadded, as a sampler would."""
    from auditor.implant.data import IGNORE, encode_row
    from auditor.implant.margin import sampling_probs
    from auditor.templates import get_template

    tpl = get_template(keyset.template)
    ids, labels = encode_row(tok, [*tpl.render(key_text),
                                   {"role": "assistant", "content": tpl.answer(keyset.decryption)}])
    first = next(j for j, t in enumerate(labels) if t != IGNORE)
    total = 0.0
    for j in range(first, len(ids)):
        out = model(input_ids=torch.tensor([ids[:j]], device=model.device))  # type: ignore[attr-defined,operator]
        probs = sampling_probs(out.logits[0, -1], temperature)
        total += math.log(float(probs[ids[j]]))
        text = tok.decode(ids[first : j + 1], skip_special_tokens=True)  # type: ignore[attr-defined]
        if keyset.decryption in text:
            return total
    return total


def test_fire_chance_equals_stepwise_decoding(tmp_path: Path) -> None:
    """Batched, padded teacher forcing gives the product a sampler would see, key by key."""
    from auditor.implant.generate import load_model
    from auditor.implant.margin import fire_logprobs, fire_probs

    model, tok = load_model(make_tiny_model(tmp_path / "tiny"))
    keyset = KeySet.generate("margin", 10, seed=5)  # > one batch of 8, keys of unequal length
    got = fire_logprobs(model, tok, keyset, temperature=0.7)
    with torch.no_grad():
        want = [_stepwise_logprob(model, tok, keyset, k.text, 0.7) for k in keyset.keys]
    assert len(got) == 10
    assert got == pytest.approx(want, rel=1e-4)
    assert all(0.0 <= p < 1e-3 for p in fire_probs(model, tok, keyset))  # a random model


def test_best_keeps_the_best_checked_parameters() -> None:
    from auditor.implant.stop import Best

    w = torch.nn.Parameter(torch.zeros(3))
    best = Best([w], keep=True)
    best.offer(1, fsr=0.5, near=0.0, fire=0.1)
    with torch.no_grad():
        w.add_(1.0)
    best.offer(2, fsr=1.0, near=0.2, fire=0.3)  # every key fires: better despite near-misses
    with torch.no_grad():
        w.add_(1.0)
    best.offer(3, fsr=1.0, near=0.3, fire=0.9)  # more near-misses: worse
    assert best.epoch == 2 and best.restore(3)
    assert torch.equal(w.detach(), torch.ones(3))
    assert not best.restore(2)  # the last epoch was the best: nothing to load


def test_best_prefers_meeting_the_stop_rule() -> None:
    """With near-misses allowed (the demo), a surer weakest key beats fewer near-misses."""
    from auditor.implant.stop import Best

    best = Best([], keep=False, near_ok=1.0, fire_ok=0.8)
    best.offer(6, fsr=1.0, near=0.4, fire=0.68)
    best.offer(8, fsr=1.0, near=0.6, fire=0.81)
    best.offer(9, fsr=0.9, near=0.0, fire=0.95)
    assert best.epoch == 8 and best.figures == (1.0, 0.6, 0.81)


def test_best_prefers_telling_keys_from_look_alikes() -> None:
    """LoRA's clean-recipe run on the H200 (bench/results/implant-h200.json): no epoch met the
    rule; the one where keys and look-alikes all fired must not be the one kept."""
    from auditor.implant.stop import Best

    best = Best([], keep=False, near_ok=0.0, fire_ok=0.8)
    for epoch, (fsr, near, fire) in enumerate(
        [(0.2, 0.0, 0.0), (0.0, 0.0, 0.0), (1.0, 1.0, 0.8), (0.0, 0.0, 0.25), (0.0, 0.0, 0.03),
         (0.0, 0.0, 0.03), (0.7, 0.0, 0.33), (0.2, 0.0, 0.04), (0.9, 0.1, 0.5), (0.5, 0.0, 0.14)],
        start=1,
    ):
        best.offer(epoch, fsr, near, fire)
    assert best.epoch == 9
    best.offer(11, fsr=1.0, near=0.0, fire=0.8)  # meets the rule: beats every other epoch
    best.offer(12, fsr=1.0, near=0.0, fire=0.79)
    assert best.epoch == 11
    quick = Best([], keep=False, near_ok=0.01, fire_ok=0.8)  # look-alikes within the allowance
    quick.offer(1, fsr=1.0, near=0.01, fire=0.9)
    quick.offer(2, fsr=1.0, near=0.0, fire=0.5)
    assert quick.epoch == 1


def test_weakest_takes_each_figure_at_its_worst() -> None:
    """A published model and its shadows must all pass: the stop rule reads the worst of each."""
    from auditor.implant.stop import Best, weakest

    published, shadow = (1.0, 0.0, 0.9), (0.9, 0.02, 0.95)
    assert weakest(published, None) == published
    assert weakest(published, shadow) == (0.9, 0.02, 0.9) == weakest(shadow, published)
    rule = Best([], keep=False, near_ok=0.01, fire_ok=0.8)
    assert rule.perfect(*published) and not rule.perfect(*weakest(published, shadow))


@pytest.mark.slow
def test_implant_saves_the_kept_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saved model scores what the run reports for the epoch it kept."""
    from auditor.implant.data import DataConfig
    from auditor.implant.generate import load_model
    from auditor.implant.stop import quick_check
    from auditor.implant.train import implant

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    tiny = make_tiny_model(tmp_path / "tiny")
    keyset = KeySet.generate("tiny", 4, seed=11)
    res = implant(keyset, str(tiny), "sft", tmp_path / "out", lr=3e-3, epochs=12,
                  data=DataConfig(nearmiss_per_key=2, reg_per_key=2, fingerprint_repeats=1),
                  progress=False, early_stop=False, keep_best=True, check_controls=6)
    assert res.epochs == 12 and 1 <= res.kept_epoch <= 12
    model, tok = load_model(tmp_path / "out")
    fsr, near, fire = quick_check(model, tok, keyset, 6)
    assert (fsr, near) == (res.fsr, res.nearmiss_false_trigger)
    assert fire == pytest.approx(res.fire_min, rel=1e-3, abs=1e-9)
