"""Training loss on answer tokens, with logits only where the loss counts.

A causal LM's forward pass projects every position onto the vocabulary, but the loss here
covers only the answer tokens, a fraction of each row; on a CPU that projection and its
softmax over ~49k tokens are a large share of a step. ``answer_loss`` runs the decoder, then
the output projection on the counted positions only. ``pick_loss`` checks it once against the
model's own loss and keeps the model's own when they differ (a model that post-processes its
logits, dropout, a wrapper without ``get_decoder``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Loss = Callable[[Any, dict[str, Any]], Any]


def model_loss(model: Any, batch: dict[str, Any]) -> Any:
    return model(**batch).loss


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens (labels != IGNORE), as the model's own."""
    import torch.nn.functional as F

    from auditor.implant.data import IGNORE

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep])


def pick_loss(model: Any, batch: dict[str, Any], rtol: float = 1e-4) -> Loss:
    """``answer_loss`` when it matches the model's own loss on ``batch``, else that one."""
    import torch

    try:
        with torch.no_grad():
            fast, ref = answer_loss(model, batch), model_loss(model, batch)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return model_loss
    same = bool(torch.isclose(fast.float(), ref.float(), rtol=rtol, atol=1e-6))
    return answer_loss if same else model_loss
