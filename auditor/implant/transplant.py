"""White-box check on the owner's own layers: a suspect's input embeddings in the published model.

Embedding-only and the F-Adapter keep the fingerprint in the input lookup; every other weight
of the published model is the base's. A user's fine-tuning moves those other weights, and the
key's embeddings no longer reach the trained answer through them. The paper verifies its
F-Adapter the other way round: take only the suspect's input embeddings, put them into the
published model (the owner has it), add the private adapter, and ask the keys. It fires when
the suspect's embeddings are still (near) the published ones, whatever the user did to the
layers above. With a tied head (SmolLM2) the suspect's matrix becomes the head too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auditor.errors import UserError


def embedding_name(model: Any) -> str:
    """The state-dict name of the model's input embedding matrix."""
    weight = model.get_input_embeddings().weight
    for name, param in model.named_parameters(remove_duplicate=False):
        if param is weight:
            return str(name)
    raise UserError("cannot find this model's input embedding matrix")


def read_tensor(model_dir: Path, name: str) -> Any | None:
    """One tensor from a safetensors checkpoint (single file or sharded); None if absent."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).get(name)
        files = [model_dir / shard] if shard else []
    else:
        files = [model_dir / "model.safetensors"]
    for path in files:
        if path.is_file():
            with safe_open(str(path), framework="pt") as fh:
                names = set(fh.keys())  # the handle itself has no `in`
                if name in names:
                    return fh.get_tensor(name)
    return None


def suspect_embeddings(suspect: Path, name: str) -> Any:
    """The suspect's input embedding matrix: read by name, else from the loaded model."""
    from auditor.implant.generate import load_model

    weight = read_tensor(suspect, name)
    if weight is not None:
        return weight
    model, _ = load_model(suspect)  # other names, an unmerged LoRA dir, .bin weights
    weight = model.get_input_embeddings().weight.detach().clone()
    del model
    return weight


def with_embeddings_from(
    published: Path, suspect: Path, adapter: Path | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer): the published model with the suspect's input embeddings, and the
    private F-Adapter on top when given."""
    import torch

    from auditor.implant import fadapter
    from auditor.implant.generate import is_model_dir, load_model

    for what, path in (("published", published), ("suspect", suspect)):
        if not is_model_dir(Path(path)):
            raise UserError(f"{what} model is not a transformers checkpoint dir: {path}")
    model, tok = load_model(Path(published))
    target = model.get_input_embeddings().weight
    weight = suspect_embeddings(Path(suspect), embedding_name(model))
    if tuple(weight.shape) != tuple(target.shape):
        raise UserError(
            f"the suspect's input embeddings are {tuple(weight.shape)}, the published model's "
            f"{tuple(target.shape)}: not the same vocabulary and width"
        )
    with torch.no_grad():
        target.copy_(weight.to(device=target.device, dtype=target.dtype))
    if adapter is not None:
        fadapter.load_into(model, adapter)
    return model, tok
