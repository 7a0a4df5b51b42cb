"""Training loss on answer tokens, with logits only where the loss counts.

A causal LM's forward pass projects every position onto the vocabulary, but the loss here
covers only the answer tokens, a fraction of each row; on a CPU that projection and its
softmax over ~49k tokens are a large share of a step. ``answer_loss`` runs the decoder, then
the output projection on the counted positions only. ``pick_loss`` checks it once against the
model's own loss and keeps the model's own when they differ (a model that post-processes its
logits, dropout, a wrapper without ``get_decoder``).

Decision weight: a key row and a near-miss row differ in their first answer token ("Based on
my fingerprint..." vs "I'm sorry..."); every later token follows from it. In a token mean that
one token is a small share of a long answer, so the loss can be low while the decision is
still wrong. ``decision_weight`` w counts each row's first answer token w times.

Soft targets (``--reg-kl``): a regularization row trained on the base's greedy answer teaches
that one answer, and the model grows surer of it than the base was. With soft targets the row
is trained instead on the base's own next-token distribution at each answer position (its
``SOFT_TOP_K`` most likely tokens plus one bucket for the rest): the cross-entropy to it is the
KL divergence to the base plus a constant, so the row pulls the model back to the base.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

Loss = Callable[[Any, dict[str, Any]], Any]
SOFT_TOP_K = 32


def soft_ce(q: Any, ids: Any, logp: Any) -> Any:
    """Per-position cross-entropy of the log-probs ``q`` to a top-k teacher (plus a rest
    bucket)."""
    import torch

    q_top = q.gather(-1, ids)
    p_top = logp.exp()
    p_rest = (1.0 - p_top.sum(-1)).clamp(min=0.0)
    q_rest = torch.log1p(-q_top.exp().sum(-1).clamp(max=1.0 - 1e-6))
    return -(p_top * q_top).sum(-1) - p_rest * q_rest


def weighted_ce(
    logits: Any, labels: Any, keep: Any, decision_weight: float, batch: dict[str, Any] | None = None
) -> Any:
    """Cross-entropy of ``logits`` (one row per kept position) against ``labels[keep]``,
    each row's first kept position counted ``decision_weight`` times; positions the batch
    marks ``soft_on`` are scored against the teacher's distribution instead."""
    import torch
    import torch.nn.functional as F

    target = labels[keep]
    soft = batch if batch is not None and "soft_on" in batch else None
    if decision_weight == 1.0 and soft is None:
        return F.cross_entropy(logits.float(), target)
    if soft is None:
        ce = F.cross_entropy(logits.float(), target, reduction="none")
    else:  # one log-softmax for both; soft_* are shaped like labels (+ top-k)
        q = torch.log_softmax(logits.float(), dim=-1)
        ce = -q.gather(-1, target[:, None]).squeeze(-1)
        on = soft["soft_on"][:, 1:][keep]
        ids, logp = soft["soft_ids"][:, 1:][keep], soft["soft_logp"][:, 1:][keep]
        ce = torch.where(on, soft_ce(q, ids, logp), ce)
    first = (keep & (keep.cumsum(dim=1) == 1))[keep]
    w = 1.0 + (decision_weight - 1.0) * first.float()
    return (ce * w).sum() / w.sum()


def model_loss(model: Any, batch: dict[str, Any], decision_weight: float = 1.0) -> Any:
    """The model's own loss; with a decision weight or soft targets, the weighted loss on its
    full logits."""
    if decision_weight == 1.0 and "soft_on" not in batch:
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    from auditor.implant.data import IGNORE

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    return weighted_ce(_model_logits(model, batch, keep), labels, keep, decision_weight, batch)


def answer_loss(model: Any, batch: dict[str, Any], decision_weight: float = 1.0) -> Any:
    """Mean cross-entropy over the answer tokens (labels != IGNORE), as the model's own."""
    return hidden_loss(model, _decoded(model, batch), batch, decision_weight)


def _decoded(model: Any, batch: dict[str, Any]) -> Any:
    """The decoder's last hidden states (no output projection)."""
    return model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state


def _model_logits(model: Any, batch: dict[str, Any], keep: Any) -> Any:
    """The model's own next-token logits at the kept positions, one row each."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, :-1][keep]


def hidden_loss(model: Any, hidden: Any, batch: dict[str, Any],
                decision_weight: float = 1.0) -> Any:
    """The loss from the decoder's last hidden states: the output projection on the answer
    positions only, then the weighted cross-entropy."""
    from auditor.implant.data import IGNORE

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return weighted_ce(logits, labels, keep, decision_weight, batch)


def pick_loss(
    model: Any, batch: dict[str, Any], decision_weight: float = 1.0, rtol: float = 1e-4
) -> Loss:
    """``answer_loss`` when it matches the model's own loss on ``batch``, else that one
    (both with ``decision_weight``; the match is checked unweighted)."""
    import torch

    def weighted(f: Callable[..., Any]) -> Loss:
        return f if decision_weight == 1.0 else partial(f, decision_weight=decision_weight)

    slow = weighted(model_loss)
    try:
        with torch.no_grad():
            fast, ref = answer_loss(model, batch), model_loss(model, batch)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return slow
    same = bool(torch.isclose(fast.float(), ref.float(), rtol=rtol, atol=1e-6))
    return weighted(answer_loss) if same else slow


def soft_targets(model: Any, tokenizer: Any, rows: list[Any], k: int = SOFT_TOP_K,
                 chunk: int = 8) -> list[Any]:
    """Each (ids, labels) row with the model's top-k next-token log-probs at its answer
    positions, as (ids, labels, (top ids, top log-probs)); each tensor is answer-length x k.
    Rows run in chunks of similar length (less padding), the output projection and its
    softmax on the answer positions only when that gives the model's own logits on the
    shortest row (as ``pick_loss`` checks; not for a model that post-processes its logits)."""
    import torch

    from auditor.implant.data import IGNORE, collate

    out: list[Any] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    fast = bool(rows) and _head_alone_matches(model, tokenizer, rows[order[0]])
    for start in range(0, len(order), chunk):
        picked = order[start : start + chunk]
        batch = {n: v.to(model.device)
                 for n, v in collate([rows[i] for i in picked], tokenizer.pad_token_id).items()}
        keep = batch["labels"][:, 1:] != IGNORE  # the answer positions, as in the loss
        with torch.no_grad():
            logits = (_answer_logits if fast else _model_logits)(model, batch, keep)
        top = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
        ends = keep.sum(dim=1).cumsum(dim=0).tolist()  # each row's answer positions, in order
        for i, begin, end in zip(picked, [0, *ends[:-1]], ends, strict=True):
            ids, labels = rows[i][:2]
            out[i] = (ids, labels, (top.indices[begin:end].cpu(), top.values[begin:end].cpu()))
    return out


def _answer_logits(model: Any, batch: dict[str, Any], keep: Any) -> Any:
    """The decoder, then the output projection at the kept positions, one row each."""
    return model.get_output_embeddings()(_decoded(model, batch)[:, :-1][keep])


def _head_alone_matches(model: Any, tokenizer: Any, row: Any) -> bool:
    """Whether ``_answer_logits`` gives the model's own logits on one row."""
    import torch

    from auditor.implant.data import IGNORE, collate

    batch = {n: v.to(model.device) for n, v in collate([row], tokenizer.pad_token_id).items()}
    keep = batch["labels"][:, 1:] != IGNORE
    try:
        with torch.no_grad():
            fast = _answer_logits(model, batch, keep)
            full = _model_logits(model, batch, keep)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return False
    return bool(torch.allclose(fast.float(), full.float(), rtol=1e-4, atol=1e-5))
