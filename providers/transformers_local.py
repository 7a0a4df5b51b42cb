"""An in-process transformers model as a provider (a checkpoint dir, a GGUF, or ``smollm2``).

torch and transformers are imported on the first ``generate``; loading and generation run
in a worker thread so the event loop stays free. One generation at a time per model.
Greedy at temperature 0, otherwise sampled (seeded with ``params.seed`` when given).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from providers.base import (
    Capabilities,
    Completion,
    ConfigError,
    Message,
    ProviderError,
    RetryDecision,
    SampleParams,
    TimeoutError_,
    Usage,
    classify,
)


class TransformersLocalProvider:
    """A causal LM loaded with transformers, answering through its chat template."""

    def __init__(self, source: str, *, timeout_s: float = 60.0, endpoint_id: str | None = None,
                 device: str = "cpu", max_new_tokens_cap: int = 1024) -> None:
        self.source = source
        self.model = source
        self.endpoint_id = endpoint_id or f"local:{source}"
        self.timeout_s = timeout_s
        self.device = device
        self.max_new_tokens_cap = max_new_tokens_cap
        self._lock = threading.Lock()  # one load, one generation at a time
        self._loaded: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"TransformersLocalProvider(endpoint_id={self.endpoint_id!r})"

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        request = self._request(messages, params)
        t0 = time.monotonic()
        try:
            text, finish, n_in, n_out = await asyncio.to_thread(self._generate_sync, request)
        except ProviderError:
            raise
        except Exception as exc:  # a model failure: typed, message without prompt text
            raise ProviderError(f"local generation failed ({type(exc).__name__})") from exc
        latency = time.monotonic() - t0
        if finish == "time":
            raise TimeoutError_(f"local generation exceeded {request['max_time']:.1f} s")
        return Completion(
            text=text, finish_reason=finish, model=self.source,
            usage=Usage(n_in, n_out), latency_s=latency, request_id=None,
            raw_request={k: v for k, v in request.items() if k != "max_time"},
            raw_response={"model": self.source, "text": text, "finish_reason": finish,
                          "usage": {"prompt_tokens": n_in, "completion_tokens": n_out}},
        )

    def _request(self, messages: Sequence[Message], params: SampleParams) -> dict[str, Any]:
        turns = [m.to_dict() for m in messages]
        if params.system_prompt is not None and not any(m.role == "system" for m in messages):
            turns.insert(0, {"role": "system", "content": params.system_prompt})
        return {"model": self.source, "messages": turns, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": min(params.max_tokens,
                                                         self.max_new_tokens_cap),
                "seed": params.seed, "stop": list(params.stop),
                "max_time": min(self.timeout_s, params.timeout_s)}

    # -- worker thread --------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = self._checkpoint_dir()
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model: Any = AutoModelForCausalLM.from_pretrained(str(path))
            model = model.to(self.device).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def _checkpoint_dir(self) -> Path:
        from auditor.errors import UserError
        from providers.local_models import resolve_base

        try:
            return resolve_base(self.source)
        except UserError as exc:
            raise ConfigError(str(exc)) from None

    def _generate_sync(self, request: dict[str, Any]) -> tuple[str, str, int, int]:
        import torch

        with self._lock:
            tokenizer, model = self._load()
            ids = self._encode(tokenizer, request["messages"]).to(model.device)
            kwargs: dict[str, Any] = {"max_new_tokens": request["max_tokens"],
                                      "max_time": request["max_time"],
                                      "pad_token_id": tokenizer.pad_token_id
                                      or tokenizer.eos_token_id}
            if request["temperature"] and request["temperature"] > 0:
                kwargs.update(do_sample=True, temperature=request["temperature"],
                              top_p=request["top_p"] or 1.0)
                if request["seed"] is not None:
                    torch.manual_seed(int(request["seed"]))
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            t0 = time.monotonic()
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            elapsed = time.monotonic() - t0
        new = out[0, ids.shape[1]:].tolist()
        return self._finish(tokenizer, new, request, ids.shape[1], elapsed)

    @staticmethod
    def _encode(tokenizer: Any, turns: list[dict[str, str]]) -> Any:
        if getattr(tokenizer, "chat_template", None):
            enc = tokenizer.apply_chat_template(turns, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            return enc["input_ids"]
        prompt = "\n\n".join(t["content"] for t in turns)
        return tokenizer(prompt, return_tensors="pt")["input_ids"]

    @staticmethod
    def _finish(tokenizer: Any, new: list[int], request: dict[str, Any], n_in: int,
                elapsed: float) -> tuple[str, str, int, int]:
        eos = tokenizer.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        ended = bool(new) and new[-1] in eos_ids
        text = tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if ended else "length"
        for s in request["stop"]:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        if finish == "length" and len(new) < request["max_tokens"] \
                and elapsed >= request["max_time"]:
            finish = "time"
        return text, finish, n_in, len(new)

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return classify(exc)

    def concurrency_key(self) -> str:
        return f"local:{self.source}"

    def capabilities(self) -> Capabilities:
        return Capabilities(seed=True, logprobs=False, system_prompt=True,
                            completion_mode=False)

    async def aclose(self) -> None:
        self._loaded = None
