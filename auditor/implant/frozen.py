"""The frozen blocks below `--top-layers`, run once per row instead of once per step.

With only the last N decoder blocks training, everything below them is a fixed function of a
row's tokens. So each row's hidden states at the first trained block are computed once, kept,
and fed to the trained blocks at every later step (a CPU step spends about half its time in
the forward pass, mostly below the trained blocks). Rows are right-padded, so a row's states do
not depend on the batch it came in. Fresh near-miss rows are computed when they first come.
"""

from __future__ import annotations

from typing import Any

from auditor.implant.loss import hidden_loss


class _Stop(Exception):
    """Raised by the hook at the first trained block: the rest of the forward is not needed."""


class FrozenBottom:
    """Cached lower-block states and the answer loss through the trained top blocks only."""

    def __init__(self, model: Any, first_trained: int) -> None:
        import torch

        self.first = first_trained
        self.decoder = model.get_decoder()
        self.top = torch.nn.ModuleList(list(self.decoder.layers)[first_trained:])
        self.cache: dict[tuple[int, ...], Any] = {}

    def _lower(self, ids: Any, mask: Any) -> Any:
        import torch

        got: dict[str, Any] = {}

        def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            got["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        hook = self.decoder.layers[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                self.decoder(input_ids=ids, attention_mask=mask)
        except _Stop:
            pass
        finally:
            hook.remove()
        return got["h"]

    def states(self, batch: dict[str, Any]) -> Any:
        """The batch's hidden states at the first trained block (cached rows reused)."""
        import torch

        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = [int(n) for n in mask.sum(1)]
        keys = [tuple(ids[i, :n].tolist()) for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            fresh = self._lower(ids[missing], mask[missing])
            for j, i in enumerate(missing):
                self.cache[keys[i]] = fresh[j, : lengths[i]].detach()
        first = self.cache[keys[0]]
        out = torch.zeros((*ids.shape, first.shape[-1]), dtype=first.dtype, device=first.device)
        for i, k in enumerate(keys):
            out[i, : lengths[i]] = self.cache[k]
        return out

    def loss(self, model: Any, batch: dict[str, Any], decision_weight: float = 1.0) -> Any:
        """`loss.answer_loss`, with the frozen blocks' part taken from the cache."""
        hidden_in = self.states(batch)
        blocks = self.decoder.layers
        self.decoder.layers = self.top
        try:
            hidden = self.decoder(
                inputs_embeds=hidden_in, attention_mask=batch["attention_mask"]
            ).last_hidden_state
        finally:
            self.decoder.layers = blocks
        return hidden_loss(model, hidden, batch, decision_weight)


def pick_frozen(model: Any, batch: dict[str, Any], top_layers: int,
                rtol: float = 1e-4) -> FrozenBottom | None:
    """A FrozenBottom below the last `top_layers` blocks when its loss matches the model's own
    on `batch`, else None."""
    import torch

    from auditor.implant.loss import model_loss

    try:
        frozen = FrozenBottom(model, len(model.get_decoder().layers) - top_layers)
        with torch.no_grad():
            fast, ref = frozen.loss(model, batch), model_loss(model, batch)
    except (AttributeError, KeyError, NotImplementedError, TypeError, ValueError):
        return None
    frozen.cache.clear()  # computed outside the step's precision: recompute in it
    if not bool(torch.isclose(fast.float(), ref.float(), rtol=rtol, atol=1e-6)):
        return None
    return frozen
