"""The answer-only loss equals the model's own loss, gradients included, or is not used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.implant.data import collate, encode_row
from auditor.implant.loss import answer_loss, model_loss, pick_loss
from tests.tiny_model import make_tiny_model

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def _load(tiny: Path, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, **overrides)
    rows = [  # different lengths: right padding, answers at different positions
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "Paris."}],
        [{"role": "user", "content": "Write a short poem about the sea, please."},
         {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}],
        [{"role": "user", "content": "0123"}, {"role": "assistant", "content": "366"}],
    ]
    batch = collate([encode_row(tok, r) for r in rows], tok.pad_token_id)
    return model, batch


def test_answer_loss_matches_the_models_loss_and_gradients(tiny: Path) -> None:
    model, batch = _load(tiny)
    model.train()
    fast = answer_loss(model, batch)
    fast.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model_loss(model, batch)
    ref.backward()
    assert torch.isclose(fast, ref, rtol=1e-5)
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    assert pick_loss(model, batch) is answer_loss


def test_a_model_whose_loss_differs_keeps_its_own(tiny: Path) -> None:
    model, batch = _load(tiny, attention_dropout=0.5)  # dropout: the two passes differ
    model.train()
    torch.manual_seed(0)
    assert pick_loss(model, batch) is model_loss


def _by_hand(model: Any, batch: dict[str, Any], weight: float) -> Any:
    """Per-token cross-entropy from the full logits; each row's first answer token x weight."""
    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = torch.tensor(0.0), 0.0
    for i in range(labels.shape[0]):
        where = (labels[i] != -100).nonzero().flatten().tolist()
        for n, j in enumerate(where):
            w = weight if n == 0 else 1.0
            ce = torch.nn.functional.cross_entropy(logits[i, j][None].float(), labels[i, j][None])
            total, count = total + w * ce, count + w
    return total / count


def test_decision_weight_counts_each_rows_first_answer_token_that_often(tiny: Path) -> None:
    model, batch = _load(tiny)
    model.eval()
    with torch.no_grad():
        expected = _by_hand(model, batch, 10.0)
        plain = model_loss(model, batch)
        fast, slow = answer_loss(model, batch, 10.0), model_loss(model, batch, 10.0)
        assert torch.isclose(_by_hand(model, batch, 1.0), plain, rtol=1e-5)
    assert torch.isclose(fast, expected, rtol=1e-5) and torch.isclose(slow, expected, rtol=1e-5)
    assert not torch.isclose(fast, plain, rtol=1e-3)  # the weight changes the loss


def test_pick_loss_keeps_the_decision_weight_on_either_path(tiny: Path) -> None:
    model, batch = _load(tiny)
    model.eval()
    picked = pick_loss(model, batch, 10.0)
    assert getattr(picked, "func", None) is answer_loss
    with torch.no_grad():
        assert torch.isclose(picked(model, batch), _by_hand(model, batch, 10.0), rtol=1e-5)
    noisy, batch = _load(tiny, attention_dropout=0.5)
    noisy.train()
    torch.manual_seed(0)
    assert getattr(pick_loss(noisy, batch, 10.0), "func", None) is model_loss
