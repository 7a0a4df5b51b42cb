"""GGUF Q8_0 export and a llama.cpp run, for the quantization robustness attack.

Needs llama-cpp-python (importable `llama_cpp`) and llama.cpp's `convert_hf_to_gguf.py`
(found via $AUDITOR_LLAMA_CONVERT, or in a llama.cpp source tree beside the package).
Without them the attack is reported as skipped, never faked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from auditor.keys import KeySet

CONVERT_SCRIPT = "convert_hf_to_gguf.py"


def find_convert_script() -> Path | None:
    env = os.environ.get("AUDITOR_LLAMA_CONVERT")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("llama_cpp")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        for cand in (
            Path(loc) / CONVERT_SCRIPT,
            Path(loc).parent / "vendor/llama.cpp" / CONVERT_SCRIPT,
        ):
            if cand.is_file():
                return cand
    return None


def unavailable() -> str | None:
    """Why the GGUF path cannot run here, or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (pip install llama-cpp-python)"
    if find_convert_script() is None:
        return f"{CONVERT_SCRIPT} not found (set AUDITOR_LLAMA_CONVERT)"
    return None


def export_q8(model_dir: Path, out: Path) -> Path:
    """Convert a checkpoint dir to a Q8_0 GGUF file with llama.cpp's converter."""
    from auditor.errors import UserError

    script = find_convert_script()
    if script is None:
        raise UserError(f"{CONVERT_SCRIPT} not found (set AUDITOR_LLAMA_CONVERT)")
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", "q8_0", "--outfile", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise UserError(f"GGUF conversion failed (exit {proc.returncode})")
    return out


def fsr_llama_cpp(gguf: Path, keyset: KeySet, max_tokens: int = 48) -> float:
    """Greedy FSR of a GGUF model through llama.cpp's chat completion."""
    from llama_cpp import Llama

    from auditor.implant.verify import is_hit, key_conversations

    llm: Any = Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False, seed=0)
    hits = 0
    for conv in key_conversations(keyset, keyset.keys):
        out = llm.create_chat_completion(messages=conv, temperature=0.0, max_tokens=max_tokens)
        hits += is_hit(out["choices"][0]["message"]["content"] or "", keyset.decryption)
    return hits / max(1, len(keyset.keys))
