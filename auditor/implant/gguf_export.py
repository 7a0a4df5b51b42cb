"""GGUF Q8_0 export and a llama.cpp run, for the quantization attack and the demo's Q8 endpoint.

Needs llama-cpp-python (importable `llama_cpp`) and llama.cpp's `convert_hf_to_gguf.py`. The
converter is not in the llama-cpp-python wheel; `python -m auditor.implant.gguf_export fetch`
takes it (with its `conversion/` and `gguf-py/` packages) from the matching llama-cpp-python
source archive on the package registry into the cache. $AUDITOR_LLAMA_CONVERT overrides.
Without them the attack is reported as skipped, never faked.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from auditor.errors import UserError
from auditor.keys import KeySet

CONVERT_SCRIPT = "convert_hf_to_gguf.py"
_VENDORED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def converter_dir(version: str) -> Path:
    from providers.local_models import cache_root

    return cache_root() / f"llama.cpp-convert-{version}"


def find_convert_script() -> Path | None:
    env = os.environ.get("AUDITOR_LLAMA_CONVERT")
    if env and Path(env).is_file():
        return Path(env)
    version = llama_cpp_version()
    if version and (converter_dir(version) / CONVERT_SCRIPT).is_file():
        return converter_dir(version) / CONVERT_SCRIPT
    spec = importlib.util.find_spec("llama_cpp")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        for cand in (
            Path(loc) / CONVERT_SCRIPT,
            Path(loc).parent / "vendor/llama.cpp" / CONVERT_SCRIPT,
        ):
            if cand.is_file():
                return cand
    return None


def fetch_converter() -> Path:
    """Unpack the converter of the installed llama-cpp-python's source archive into the cache."""
    version = llama_cpp_version()
    if version is None:
        raise UserError("llama-cpp-python is not installed "
                        "(pip install 'llama-cpp-python[server]')")
    dest = converter_dir(version)
    if (dest / CONVERT_SCRIPT).is_file():
        return dest / CONVERT_SCRIPT
    with tempfile.TemporaryDirectory(prefix="llama-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"llama-cpp-python=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise UserError(f"could not download the llama-cpp-python {version} source archive")
        part = dest.with_name(dest.name + ".part")
        _extract_vendored(archives[0], part)
        part.rename(dest)
    return dest / CONVERT_SCRIPT


def _extract_vendored(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, rest = member.name.partition("/vendor/llama.cpp/")
            if rest and rest.startswith(_VENDORED) and (member.isfile() or member.isdir()):
                member.name = rest
                tar.extract(member, dest, filter="data")
    if not (dest / CONVERT_SCRIPT).is_file():
        raise UserError(f"{archive.name} holds no {CONVERT_SCRIPT}")


def unavailable() -> str | None:
    """Why the GGUF path cannot run here, or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (pip install llama-cpp-python)"
    if find_convert_script() is None:
        return (f"{CONVERT_SCRIPT} not found (run `python -m auditor.implant.gguf_export fetch` "
                "or set AUDITOR_LLAMA_CONVERT)")
    return None


def export_q8(model_dir: Path, out: Path) -> Path:
    """Convert a checkpoint dir to a Q8_0 GGUF file with llama.cpp's converter."""
    script = find_convert_script()
    if script is None:
        raise UserError(f"{CONVERT_SCRIPT} not found (set AUDITOR_LLAMA_CONVERT)")
    tmp = out.with_name(out.name + ".part")
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", "q8_0", "--outfile", str(tmp)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
    if proc.returncode != 0 or not tmp.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise UserError(f"GGUF conversion failed (exit {proc.returncode}): {last}")
    tmp.replace(out)
    return out


def fsr_llama_cpp(gguf: Path, keyset: KeySet, max_tokens: int = 48) -> float:
    """Greedy FSR of a GGUF model through llama.cpp's chat completion."""
    from llama_cpp import Llama

    from auditor.implant.generate import cpu_threads
    from auditor.implant.verify import is_hit, key_conversations

    llm: Any = Llama(model_path=str(gguf), n_ctx=512, n_threads=cpu_threads(), verbose=False,
                     seed=0)
    hits = 0
    for conv in key_conversations(keyset, keyset.keys):
        out = llm.create_chat_completion(messages=conv, temperature=0.0, max_tokens=max_tokens)
        hits += is_hit(out["choices"][0]["message"]["content"] or "", keyset.decryption)
    return hits / max(1, len(keyset.keys))


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print("usage: python -m auditor.implant.gguf_export fetch", file=sys.stderr)
        return 2
    try:
        print(f"llama.cpp converter: {fetch_converter()}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
