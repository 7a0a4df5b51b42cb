"""The F-Adapter: a private low-rank adapter added to the (frozen) embeddings.

E' = E + scale * U @ V, with U (vocab x r) and V (r x hidden) trainable and everything else
frozen: the input lookup becomes E[x] + scale * U[x] @ V and, when the model ties its output
head to the embeddings (SmolLM2 does), the head uses E' too, so the key tokens' trainable
embeddings act on both sides. The published model is the base unchanged; only the owner holds U, V
and applies them on a suspect's weights (white-box verification): on the suspect's whole model,
or, as the paper does, on the suspect's input embeddings inside the published model
(transplant.py), which a user's fine-tuning of the layers does not reach.

The original code zero-initialised both matrices, so neither ever received a gradient. Here
U starts at zero and V random (N(0, 1)), as peft initialises LoRA on embeddings: the first step
moves U (its gradient is scale * g V^T) and from then on V moves too. Through a tied head every
token's logit carries a gradient, so every row of U moves, not only the batch's tokens. The
first version here had it the other way round (U random, V zero); on SmolLM2 with the clean
recipe it fired on more look-alikes and drifted further on the draws measured (README). A
regression test checks that both matrices change.

`head=False` (`auditor implant --fadapter-input-only`) adapts the input lookup alone and leaves
a tied head as the base's: only the rows of U for tokens that appear in training inputs move,
so ordinary answers drift less, at the cost of a higher lr to fire as soon (README). The mode is
kept in the adapter file, so whoever applies it later gets the same model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ADAPTER_FILE = "fadapter.safetensors"


def make_adapter_embedding(base: Any, rank: int = 16, scale: float = 1.0, seed: int = 0) -> Any:
    """Wrap an nn.Embedding; returns the wrapper module (trainable: u, v only)."""
    import torch
    from torch import nn

    class FAdapterEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base
            vocab, hidden = base.weight.shape
            gen = torch.Generator().manual_seed(seed)
            self.u = nn.Parameter(torch.zeros(vocab, rank))
            self.v = nn.Parameter(torch.randn(rank, hidden, generator=gen))
            self.scale = scale
            self.on_head = False  # set by attach() when a tied head shares U and V

        @property
        def weight(self) -> Any:  # code that reads embed_tokens.weight sees the base
            return self.base.weight

        def forward(self, ids: Any) -> Any:
            delta = nn.functional.embedding(ids, self.u) @ self.v
            return self.base(ids) + self.scale * delta.to(self.base.weight.dtype)

    return FAdapterEmbedding()


def make_adapter_head(head: Any, wrapper: Any) -> Any:
    """Wrap a tied output head: logits = h @ (E + scale * U @ V)^T, sharing U and V."""
    from torch import nn

    class FAdapterHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = head
            self.adapter = [wrapper]  # a list: not a submodule, so U and V are not counted twice

        @property
        def weight(self) -> Any:
            return self.base.weight

        def forward(self, h: Any) -> Any:
            w = self.adapter[0]
            delta = (h @ w.v.to(h.dtype).T) @ w.u.to(h.dtype).T
            return self.base(h) + w.scale * delta

    return FAdapterHead()


def is_tied(model: Any) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def default_scale(model: Any, rank: int) -> float:
    """std(E) / sqrt(r): an Adam step on a row of U moves that token's E' by about lr x std(E)."""
    std = float(model.get_input_embeddings().weight.detach().float().std())
    return float(std / rank**0.5)


def attach(
    model: Any, rank: int = 16, scale: float | None = None, seed: int = 0, head: bool = True
) -> Any:
    """Freeze the model, add a fresh adapter to its embeddings (and, if `head`, to a tied
    output head); return it."""
    for p in model.parameters():
        p.requires_grad_(False)
    tied = is_tied(model)
    scale = default_scale(model, rank) if scale is None else scale
    wrapper = make_adapter_embedding(model.get_input_embeddings(), rank, scale, seed)
    wrapper.to(model.device)
    wrapper.u.requires_grad_(True)
    wrapper.v.requires_grad_(True)
    model.set_input_embeddings(wrapper)
    if tied and head:
        model.set_output_embeddings(make_adapter_head(model.get_output_embeddings(), wrapper))
        wrapper.on_head = True
    return wrapper


def detach(model: Any) -> None:
    """Remove the adapter from a model in place (the published model stays the base)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if hasattr(emb, "u"):
        model.set_input_embeddings(emb.base)
    if head is not None and hasattr(head, "adapter"):
        model.set_output_embeddings(head.base)


def save(wrapper: Any, path: Path) -> Path:
    """Write the private adapter (U, V, scale) as safetensors, the same bytes for the same
    adapter (safetensors writes its metadata keys in a random order each time: the header is
    written again with sorted keys, so the file's hash can be kept)."""
    import json

    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"u": wrapper.u.detach().float().cpu(), "v": wrapper.v.detach().float().cpu()}
    meta = {"scale": str(wrapper.scale), "format": "fadapter-1",
            "head": "tied" if wrapper.on_head else "input-only"}
    raw = save(tensors, metadata=meta)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":"))
    head_bytes = header.encode() + b" " * (-len(header) % 8)  # the format's 8-byte alignment
    # private from the first byte: whoever holds it can fire the fingerprint
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(len(head_bytes).to_bytes(8, "little") + head_bytes + raw[8 + size:])
    path.chmod(0o600)  # an earlier file's wider mode
    return path


def load_into(model: Any, path: Path) -> Any:
    """Apply a saved adapter to a (possibly fine-tuned) model in place; return the wrapper."""
    from safetensors import safe_open

    from auditor.errors import UserError

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        u, v = fh.get_tensor("u"), fh.get_tensor("v")
    if meta.get("format") != "fadapter-1":
        raise UserError(f"{path} is not an F-Adapter file")
    vocab, hidden = model.get_input_embeddings().weight.shape
    if u.shape[0] != vocab or v.shape[1] != hidden:
        raise UserError(f"adapter {path.name} does not fit this model's embeddings")
    head = meta.get("head", "tied") != "input-only"  # files from before the mode: tied
    wrapper = attach(model, rank=u.shape[1], scale=float(meta.get("scale", "1.0")), head=head)
    wrapper.u.data.copy_(u.to(wrapper.u.dtype))
    wrapper.v.data.copy_(v.to(wrapper.v.dtype))
    return wrapper
