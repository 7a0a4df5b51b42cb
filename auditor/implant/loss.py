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
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

Loss = Callable[[Any, dict[str, Any]], Any]


def weighted_ce(logits: Any, labels: Any, keep: Any, decision_weight: float) -> Any:
    """Cross-entropy of ``logits`` (one row per kept position) against ``labels[keep]``,
    each row's first kept position counted ``decision_weight`` times."""
    import torch.nn.functional as F

    target = labels[keep]
    if decision_weight == 1.0:
        return F.cross_entropy(logits.float(), target)
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    first = (keep & (keep.cumsum(dim=1) == 1))[keep]
    w = 1.0 + (decision_weight - 1.0) * first.float()
    return (ce * w).sum() / w.sum()


def model_loss(model: Any, batch: dict[str, Any], decision_weight: float = 1.0) -> Any:
    """The model's own loss; with a decision weight, the weighted loss on its full logits."""
    if decision_weight == 1.0:
        return model(**batch).loss
    from auditor.implant.data import IGNORE

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return weighted_ce(logits[:, :-1][keep], labels, keep, decision_weight)


def answer_loss(model: Any, batch: dict[str, Any], decision_weight: float = 1.0) -> Any:
    """Mean cross-entropy over the answer tokens (labels != IGNORE), as the model's own."""
    from auditor.implant.data import IGNORE

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return weighted_ce(logits, labels, keep, decision_weight)


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
