"""One line naming the machine a benchmark ran on (every bench script prints it)."""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    from auditor.implant.generate import cpu_threads

    return (f"{platform.system()} {platform.release()}, {cpu}{_bf16()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, load avg {load:.2f}, "
            f"{cpu_threads()} implant thread(s) (AUDITOR_THREADS){_gpu()}{_matmul_rates()}")


def _matmul_rates(seconds: float = 0.3) -> str:
    """The CPU's matrix-product rate now, on as many threads as the implant (a 768 x 576 by
    576 x 1536 product, one of SmolLM2's MLP layers on a batch). A VM's share of its host
    varies: one 2-core VM measured 160 and 359 GFLOP/s in fp32 in two sessions of one day, and
    the same implant's epochs took 33-43 s and about 21 s, so a timing is read against the
    rate measured with it. Left out with a GPU."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return ""
    if torch.cuda.is_available():
        return ""
    from auditor.implant.generate import cpu_has_bf16, cpu_threads

    kinds = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu_has_bf16() else [])
    was = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())
    rates = []
    try:
        for name, dtype in kinds:
            x, w = torch.randn(768, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
            F.linear(x, w)
            runs, start = 0, time.perf_counter()
            while runs < 10_000 and (runs < 3 or time.perf_counter() - start < seconds):
                F.linear(x, w)
                runs += 1
            rate = 2 * 768 * 576 * 1536 * runs / (time.perf_counter() - start) / 1e9
            rates.append(f"{name} {rate:.0f}")
    finally:
        torch.set_num_threads(was)
    return f", matmul GFLOP/s now: {', '.join(rates)}"


def _bf16() -> str:
    """Whether the CPU has bf16 instructions: one model name (e.g. "AMD EPYC") covers CPUs
    with and without, and --precision bf16 pays only with them."""
    try:
        from auditor.implant.generate import cpu_has_bf16

        return " (bf16 instructions)" if cpu_has_bf16() else " (no bf16 instructions)"
    except ImportError:
        return ""


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return ""
    if not torch.cuda.is_available():
        return ", no GPU"
    return f", GPU {torch.cuda.get_device_name(0)}"


def table_console() -> Console:
    """A rich Console that keeps wide tables whole when the output is a file or a pipe."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)
