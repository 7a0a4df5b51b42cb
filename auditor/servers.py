"""Start real OpenAI-compatible servers on 127.0.0.1 for the demo and end-to-end tests.

- ``transformers serve DIR`` (the `transformers[serving]` extra) for a checkpoint directory;
- ``python -m llama_cpp.server`` (llama-cpp-python[server]) for a GGUF file, when installed.

Each server runs in its own process group, is polled until it answers, and is stopped with
SIGTERM then SIGKILL, also when the caller is interrupted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from auditor.errors import AuditFailed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    model: str  # what requests must name in "model"
    port: int
    argv: list[str]
    log_path: Path
    threads: int = 1  # CPU threads; OpenMP oversubscription slows a shared CPU many times over
    warmup_temperature: float | None = None  # first request, fixing a batching server's sampling
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"compat:{self.base_url}#{self.model}"

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AuditFailed(
                    f"server {self.name} exited with code {self.proc.returncode}; "
                    f"see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.3)
        raise AuditFailed(f"server {self.name} not ready after {timeout_s:.0f} s; "
                          f"see {self.log_path}")

    @property
    def batching(self) -> bool:
        return "--continuous-batching" in self.argv

    def warm_up(self, timeout_s: float = 120.0) -> None:
        """One short request at the warm-up temperature (a no-op without one)."""
        if self.warmup_temperature is None:
            return
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 2, "temperature": self.warmup_temperature}
        try:
            r = httpx.post(f"{self.base_url}/chat/completions", json=body, timeout=timeout_s)
        except httpx.HTTPError as err:
            why = f"{type(err).__name__}: {err}"
        else:
            if r.status_code == 200:
                return
            why = f"HTTP {r.status_code}"
        raise AuditFailed(f"server {self.name} failed its warm-up request ({why}); "
                          f"see {self.log_path}")

    def stop(self, grace_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)


def _transformers_cli() -> list[str]:
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if exe is None:
        raise AuditFailed("`transformers` command not found: pip install 'transformers[serving]'")
    return [exe]


def transformers_server(name: str, model_dir: Path, log_dir: Path, *,
                        batching_temperature: float | None = None) -> Server:
    """A plain server (one request at a time, per-request temperature), or with
    ``batching_temperature`` a continuous-batching one: parallel requests, about twice the
    tokens per second on a CPU, but one sampling setup for its lifetime, taken from its first
    request (transformers 5.24), so it is warmed up at that temperature before use.
    """
    port = free_port()
    model = str(model_dir.resolve())
    argv = [*_transformers_cli(), "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--device", "cpu", "--log-level", "warning"]
    warmup = None
    if batching_temperature is not None:
        # a small paged KV cache (32 pages of 256 tokens): by default it takes most of the RAM
        argv += ["--continuous-batching", "--cb-num-blocks", "32", "--cb-max-batch-tokens", "2048"]
        warmup = batching_temperature
    return Server(name, model, port, argv, log_dir / f"{name}.log", warmup_temperature=warmup)


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and \
        importlib.util.find_spec("uvicorn") is not None


def llama_cpp_server(name: str, gguf: Path, log_dir: Path, alias: str = "fingerprinted-q8") \
        -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
            alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", "2"]  # the GGUF's own chat template, as in training
    return Server(name, alias, port, argv, log_dir / f"{name}.log")


@contextlib.contextmanager
def running(servers: list[Server], timeout_s: float = 180.0) -> Iterator[list[Server]]:
    """Start all, wait until each answers, and always stop all on the way out."""
    share = max(1, (os.cpu_count() or 1) // max(1, len(servers)))
    for s in servers:
        s.threads = share
        if "--n_threads" in s.argv:  # llama.cpp takes its thread count as an option
            s.argv[s.argv.index("--n_threads") + 1] = str(share)
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(timeout_s)
        for s in servers:
            s.warm_up(timeout_s)
        yield servers
    finally:
        for s in servers:
            s.stop()
