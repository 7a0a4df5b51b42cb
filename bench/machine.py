"""One line naming the machine a benchmark ran on (every bench script prints it)."""

from __future__ import annotations

import os
import platform
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
            f"{cpu_threads()} implant thread(s) (AUDITOR_THREADS){_gpu()}")


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
