"""Refuse a multi-process launch that accelerate does not make distributed.

`torchrun --nproc_per_node 2` on a machine without GPUs, or `accelerate launch` with an FSDP or
DeepSpeed config there, starts two processes that accelerate each sets up as a lone,
non-distributed run: each would train on every row and write the same --out at the same time.
accelerate's FSDP and DeepSpeed run on GPUs only; on CPUs the distributed path is its
multi-CPU one (ACCELERATE_USE_CPU=true under torchrun: DDP over gloo).

Under FSDP some runs cannot hold and are refused before loading: the confined lookup rows lose
their per-row gradient mask (FSDP 1's flat parameters drop it, seen on one H200, 2026-12-04;
FSDP 2's sharded parameters are new ones without it: every row a step touched moved, two CPU
processes, 2026-12-05); FSDP 2 cannot write the rows `fingerprint-after` puts back to its
shards; the shadow runs the model's parts one by one, which no distributed run allows. FSDP 2
is taken from accelerate 1.16 on (tested with its own preparation as two CPU processes; 1.15
could not shard the F-Adapter's lookup on the H200). FSDP 1 ran full SFT, LoRA and the
F-Adapter on one GPU (tests/test_implant_launch.py); with several processes, under either
version, the check and the save gather the shards first (sharded.py). DeepSpeed ZeRO 2 and 3
ran every method (embedding on its confined rows) as two CPU processes, each run equal to DDP's
(tests/test_implant_deepspeed_cpu.py; ZeRO 1, and fingerprint-after under ZeRO 2, once by
hand); `fingerprint-after` is refused under ZeRO-3, whose partitions the rows put back would
not reach, and DeepSpeed's own bf16 or fp16, which casts the model itself (the saved model was
bf16, every frozen weight rounded; `--precision bf16` autocasts over its fp32 weights instead).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from auditor.errors import UserError
from auditor.implant.lookup_rows import CONFINED


def launched_processes() -> int:
    """How many processes the launcher says it started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _refuse(message: str) -> None:
    """Exit 2 in every process, with one message: rank 0 says it."""
    if os.environ.get("RANK", "0") != "0":
        raise SystemExit(2)
    raise UserError(message)


def _state() -> Any:
    """accelerate's process state, read with the ACCELERATE_USE_CPU flag the Accelerator uses:
    this state is the one it will share."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def fsdp_version() -> int | None:
    """The FSDP version accelerate will run this process under, or None (no FSDP, or none
    possible: accelerate leaves a launch without GPUs undistributed)."""
    from accelerate.utils import parse_flag_from_env

    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return None
    if _state().distributed_type.value == "NO":
        return None
    return 2 if os.environ.get("FSDP_VERSION", "1").strip() == "2" else 1


def deepspeed_stage() -> int | None:
    """The ZeRO stage accelerate will run this process under, or None (no DeepSpeed, or none
    possible): its config file's, else ACCELERATE_DEEPSPEED_ZERO_STAGE, else accelerate's 2."""
    from accelerate.utils import parse_flag_from_env

    if not parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return None
    if _state().distributed_type.value == "NO":
        return None
    stage = _deepspeed_file().get("zero_optimization", {}).get("stage")
    if isinstance(stage, int):
        return stage
    try:
        return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    except ValueError:
        return 2


def _deepspeed_file() -> dict[str, Any]:
    """The DeepSpeed config file accelerate was given, or {} (accelerate says what is wrong
    with one it cannot read)."""
    file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if file == "none":
        return {}
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def deepspeed_half() -> str | None:
    """"bf16" or "fp16" when DeepSpeed would keep the model itself in that dtype (accelerate's
    --mixed_precision, or the config file's own section)."""
    config = _deepspeed_file()
    for half in ("bf16", "fp16"):
        section = config.get(half)
        if isinstance(section, dict) and section.get("enabled") is True:
            return half
    chosen = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    return chosen if chosen in ("bf16", "fp16") else None


def quiet_deepspeed() -> None:
    """DeepSpeed, where installed, is imported by accelerate (to unwrap a model) and logs to
    stdout, where --json goes: import it first with its log handler bound to stderr."""
    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        importlib.import_module("deepspeed")


def hf_zero3_off() -> None:
    """Under ZeRO-3 accelerate tells transformers to load each model partitioned and to generate
    in step with every process. Here the engine partitions the model it is given, and a model
    loaded or run after is one process's alone (the robustness check's main process waited for
    the others for good, in both): transformers is told no more."""
    hf_ds: Any = sys.modules.get("transformers.integrations.deepspeed")
    if hf_ds is not None:
        hf_ds.unset_hf_deepspeed_config()


def refuse_unsupported(method: str, lookup_rows: str, shadow: bool) -> None:
    """Fail before loading on what the FSDP version at hand cannot train (module docstring)."""
    version = fsdp_version()
    if shadow and (version is not None or launched_processes() > 1):
        _refuse("--shadow needs a single process: it runs the model's parts one by one, which "
                "no distributed run allows")
    if lookup_rows == "fingerprint-after" and deepspeed_stage() == 3:
        _refuse("--lookup-rows fingerprint-after cannot run under DeepSpeed ZeRO-3 (the rows it "
                "puts back would not reach the partitions): use ZeRO 1 or 2, DDP (torchrun) "
                "or --lookup-rows all")
    if version is None:
        return
    if version == 2:
        _refuse_old_accelerate()
    if lookup_rows in CONFINED:
        why = ("its flat parameters drop" if version == 1
               else "its sharded parameters are new ones, without")
        _refuse(f"--lookup-rows {lookup_rows} cannot hold under FSDP {version} ({why} the "
                f"per-row gradient mask): use DDP (torchrun) or --lookup-rows all"
                + (" (embedding's default is unshared)" if method == "embedding" else ""))
    if version == 2 and lookup_rows == "fingerprint-after":
        _refuse("--lookup-rows fingerprint-after cannot run under FSDP 2 (the rows it puts back "
                "would not reach the shards): launch with --fsdp_version 1, use DDP "
                "(torchrun) or --lookup-rows all")


def accelerate_version() -> str:
    from importlib.metadata import version

    return version("accelerate")


def _refuse_old_accelerate() -> None:
    """FSDP 2 as tested: accelerate 1.16 gives the lookup and the head units of their own
    (1.15 could not shard the F-Adapter's lookup)."""
    found = accelerate_version()
    if tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < (1, 16):
        _refuse(f"FSDP 2 needs accelerate 1.16 or later (found {found}): upgrade it, or "
                "launch with --fsdp_version 1")


def refuse_lone_processes() -> None:
    """Fail before any work when a launcher started several processes but accelerate set up
    no distributed run for them, or DeepSpeed with its own bf16 or fp16 (module docstring)."""
    quiet_deepspeed()
    wanted = launched_processes()
    if wanted == 1:
        return
    half = deepspeed_half() if deepspeed_stage() is not None else None
    if half is not None:
        _refuse(f"DeepSpeed's {half} keeps the model itself in {half}: every frozen weight "
                "would be rounded for good and the model saved so. Launch DeepSpeed without "
                "--mixed_precision (implant's --precision bf16 computes in bf16 over fp32 "
                "weights)")
    if _state().num_processes == wanted:
        return
    _refuse(
        f"started as {wanted} processes, but accelerate set up no distributed run for them: "
        "each would train alone and write the same --out. On CPUs run ACCELERATE_USE_CPU=true "
        f"torchrun --standalone --nproc_per_node {wanted} -m auditor.cli ... (accelerate's "
        "FSDP and DeepSpeed need GPUs)"
    )
