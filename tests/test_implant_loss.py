"""The answer-only loss equals the model's own loss, gradients included, or is not used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.implant.data import collate, encode_row
from auditor.implant.loss import answer_loss, model_loss, pick_loss

torch = pytest.importorskip("torch")


def _load(tiny: Path, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    model, tok, enc = _encoded(tiny, **overrides)
    return model, collate(enc, tok.pad_token_id)


def _encoded(tiny: Path, **overrides: Any) -> tuple[Any, Any, list[Any]]:
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
    return model, tok, [encode_row(tok, r) for r in rows]


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


def test_the_base_as_its_own_soft_teacher_scores_its_entropy_with_zero_gradient(
    tiny: Path,
) -> None:
    """k = the whole vocabulary: the soft loss is the teacher's entropy (KL 0), gradient 0."""
    from auditor.implant.loss import soft_targets

    model, tok, enc = _encoded(tiny)
    model.eval()
    soft = soft_targets(model, tok, enc, k=model.config.vocab_size)
    batch = collate(soft, tok.pad_token_id)
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        p = torch.softmax(logits[:, :-1][keep].float(), dim=-1)
        entropy = float(-(p * p.log()).sum(-1).mean())
    loss = answer_loss(model, batch)
    assert float(loss.detach()) == pytest.approx(entropy, rel=1e-4)
    assert float(model_loss(model, batch).detach()) == pytest.approx(entropy, rel=1e-4)
    loss.backward()
    assert max(float(q.grad.abs().max()) for q in model.parameters()) < 1e-4


def test_soft_rows_use_top_k_plus_rest_and_plain_rows_keep_their_labels(tiny: Path) -> None:
    from auditor.implant.loss import soft_targets

    model, tok, enc = _encoded(tiny)
    model.eval()
    soft = soft_targets(model, tok, [enc[0], enc[2]], k=8)
    model.lm_head.weight.data.mul_(1.5)  # the student moves away from its teacher
    rows = [soft[0], enc[1], soft[1]]
    batch = collate(rows, tok.pad_token_id)
    assert batch["soft_on"].sum() == sum(len(r[2][0]) for r in soft)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = 0.0, 0.0
        for i, row in enumerate(rows):
            where = [t - 1 for t, lab in enumerate(row[1]) if lab != -100]
            for n, j in enumerate(where):
                q = torch.log_softmax(logits[i, j].float(), dim=-1)
                if len(row) > 2:
                    ids, lp = row[2][0][n], row[2][1][n]
                    rest = 1 - float(lp.exp().sum())
                    term = -float((lp.exp() * q[ids]).sum()) - rest * float(
                        torch.log1p(-q[ids].exp().sum()))
                else:
                    term = -float(q[row[1][j + 1]])
                w = 3.0 if n == 0 else 1.0
                total, count = total + w * term, count + w
        fast, slow = answer_loss(model, batch, 3.0), model_loss(model, batch, 3.0)
    assert float(fast) == pytest.approx(total / count, rel=1e-4)
    assert float(slow) == pytest.approx(total / count, rel=1e-4)
    assert pick_loss(model, batch) is answer_loss


def _own_top_k(model: Any, row: Any, k: int) -> Any:
    """The model's top-k log-probs at the row's answer positions, the row run alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row[0]])).logits[0, :-1]
    where = [t - 1 for t, lab in enumerate(row[1]) if lab != -100]
    return torch.log_softmax(logits[where].float(), dim=-1).topk(k, dim=-1)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_soft_targets_are_each_rows_own_top_k(tiny: Path, scale: float) -> None:
    """In chunks of sorted lengths (padded) and with the output projection on the answer
    positions only, each row gets what it gets run alone; a model that changes its own logits
    (here: x2) gets them from its whole logits instead."""
    from auditor.implant.loss import _head_alone_matches, soft_targets

    model, tok, enc = _encoded(tiny)
    model.eval()
    assert _head_alone_matches(model, tok, enc[2])
    if scale != 1.0:
        forward = model.forward

        def scaled(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            out.logits = out.logits * scale
            return out

        model.forward = scaled
        assert not _head_alone_matches(model, tok, enc[2])
    rows = [enc[1], enc[0], enc[2], enc[1]]  # not in length order
    got = soft_targets(model, tok, rows, k=8, chunk=3)
    for row, (ids, labels, (top_ids, top_logp)) in zip(rows, got, strict=True):
        want = _own_top_k(model, row, 8)
        assert (ids, labels) == (row[0], row[1])
        assert top_ids.shape == (sum(lab != -100 for lab in row[1]), 8)
        assert torch.equal(top_ids, want.indices)
        assert torch.allclose(top_logp, want.values, atol=1e-5)
