"""Skip the rows that cannot move a confined lookup.

With only some rows of the input lookup training (embedding-only, `--lookup-rows fingerprint`
or `unshared`) and the output head frozen, a training row holding none of their tokens has no
gradient: every parameter it reads is fixed. Under `unshared` that is every regularization row
by construction (their tokens are the ones left out), about half of a step's tokens on SmolLM2.
The loss is a weighted mean over answer tokens, so the live rows' loss times their share of
the weight differs from the full batch's by a constant: the same gradient, the same step,
without the dead rows' forward and backward passes. The printed loss then covers live rows.

torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from auditor.implant.loss import Loss


def row_weights(labels: Any, decision_weight: float) -> Any:
    """Each row's share of the loss's denominator: its answer tokens, its first one counted
    `decision_weight` times (as loss.weighted_ce counts them)."""
    from auditor.implant.data import IGNORE

    kept = (labels[:, 1:] != IGNORE).sum(dim=1).float()
    return kept + (decision_weight - 1.0) * (kept > 0).float()


def trained_at(batch: dict[str, Any], ids: Any) -> Any:
    """Where the batch's real (unpadded) tokens are one of `ids` (a tensor of token ids)."""
    import torch

    tokens = batch["input_ids"]
    return torch.isin(tokens, ids.to(tokens.device)) & batch["attention_mask"].bool()


def take_rows(batch: dict[str, Any], on: Any) -> dict[str, Any]:
    """The batch's rows where `on`, trimmed to their width (rows are right-padded)."""
    sub = {k: v[on] for k, v in batch.items()}
    width = int(sub["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in sub.items()}


class LiveRows:
    """Which rows of a batch hold a trained token, and the loss over those alone."""

    def __init__(self, ids: Sequence[int], decision_weight: float) -> None:
        import torch

        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)
        self.decision_weight = decision_weight

    def mask(self, batch: dict[str, Any]) -> Any:
        """Rows with a trained token among their real (unpadded) positions."""
        return trained_at(batch, self.ids).any(dim=1)

    def wrap(self, loss_fn: Loss, zero: Callable[[], Any] | None = None) -> Loss:
        """`loss_fn` on the live rows, scaled to its share of the full batch's weight. With no
        live row: `zero()` (a zero loss that still reaches the parameters, so the optimizer
        steps as it would on a zero gradient), or None when there is no `zero`."""

        def live(model: Any, batch: dict[str, Any]) -> Any:
            on = self.mask(batch)
            if bool(on.all()):
                return loss_fn(model, batch)
            weight = row_weights(batch["labels"], self.decision_weight)
            total = weight.sum()
            if float(total) == 0.0:  # no answer token at all: leave it to the loss
                return loss_fn(model, batch)
            if not bool(on.any()):
                return zero() if zero is not None else None
            return loss_fn(model, take_rows(batch, on)) * (weight[on].sum() / total)

        return live
