"""Loading a local checkpoint and batched chat generation (shared by data, train, verify).

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
MAX_THREADS = os.cpu_count() or 1
# One thread by default (AUDITOR_THREADS raises it): on a busy 2-core machine two OpenMP
# threads ran 35x slower than one; on an idle one they run ~1.7x faster.
DEFAULT_THREADS = 1


def cpu_threads() -> int:
    """CPU threads for torch and llama.cpp: $AUDITOR_THREADS, within 1..cpu_count."""
    raw = os.environ.get("AUDITOR_THREADS", str(DEFAULT_THREADS))
    try:
        threads = int(raw)
    except ValueError:
        from auditor.errors import UserError

        raise UserError(f"AUDITOR_THREADS must be a whole number, not {raw!r}") from None
    return max(1, min(threads, MAX_THREADS))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays;
    elsewhere torch emulates it, slower than fp32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def use_gpu() -> bool:
    """A GPU is there and not turned down with ACCELERATE_USE_CPU (accelerate's own switch:
    its CPU processes must find the model and every tensor on the CPU too)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")


def pick_device() -> tuple[str, Any]:
    """('cuda', bf16) on a GPU, ('cpu', fp32) otherwise."""
    import torch

    if use_gpu():
        return "cuda", torch.bfloat16
    torch.set_num_threads(cpu_threads())
    return "cpu", torch.float32


def load_model(model_dir: Path, *, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a checkpoint dir; bf16 on a GPU unless told."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, default_dtype = pick_device()
    dtype = dtype or default_dtype
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.to(device or dev)
    model.eval()
    return model, tokenizer


def is_model_dir(path: Path) -> bool:
    """A full checkpoint, or an unmerged LoRA adapter dir (transformers loads it via peft)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def prompt_text(tokenizer: Any, messages: Messages) -> str:
    """The chat template with the assistant header, as the served chat API renders it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)


def generate(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Messages],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """Answer each conversation; greedy at temperature 0, sampled (seeded) otherwise."""
    import torch

    out: list[str] = []
    tokenizer.padding_side = "left"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        texts = [prompt_text(tokenizer, m) for m in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if temperature > 0:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        with torch.no_grad():
            ids = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, **kwargs)
        new = ids[:, enc["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out
