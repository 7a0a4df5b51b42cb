"""A fault-injecting responder for tests/fakeserver.py: wraps a behaviour, breaks some replies.

By a seeded schedule, a share of requests gets one of the faults of ``FAULTS`` instead of the
behaviour's answer::

    inj = FaultInjector(fb.vanilla(), rate=0.3, seed=1)
    with FakeLLMServer(inj) as srv: ...

Each prompt gets at most ``max_faults_per_prompt`` failing replies, so a retry layer with
more attempts than that always ends in the behaviour's own answer: faults may cost time,
never change an outcome. Every request is logged (wall-clock arrival, prompt, fault) so a test
can check what reached the server and when.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from tests.fakeserver import (
    FakeReply,
    FakeRequest,
    Responder,
    anthropic_error,
    openai_error,
)

# Fault kinds. "drip" delivers the real answer slowly (a success); the rest fail the attempt.
FAULTS: tuple[str, ...] = (
    "429_seconds", "429_ms", "429_date", "500", "502", "503", "529", "anthropic_overloaded",
    "reset", "stall", "drip", "malformed_json", "wrong_content_type", "huge_body",
    "empty_choices",
)
SUCCESS_FAULTS = frozenset({"drip"})
HUGE_BYTES = 4 * 1024 * 1024 + 4096  # just over the providers' 4 MiB response limit


@dataclass(frozen=True)
class Arrival:
    """One request as the server saw it."""

    t_wall: float  # time.time() at arrival
    prompt: str
    fault: str | None  # None: the behaviour's own answer
    earliest_retry: float | None = None  # Retry-After faults: no retry before this wall time


@dataclass
class FaultInjector:
    """A Responder: ``inner``'s answers, with seeded faults in front of them."""

    inner: Responder
    rate: float = 0.3
    seed: int = 0
    kinds: tuple[str, ...] = FAULTS
    max_faults_per_prompt: int = 2
    retry_after_s: int = 1  # Retry-After in seconds (an integer, as HTTP says)
    retry_after_ms: int = 50
    drip_s: float = 0.002
    log: list[Arrival] = field(default_factory=list)
    _faults_of: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _seen: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")

    def __call__(self, req: FakeRequest) -> FakeReply:
        with self._lock:
            kind = self._pick(req.prompt)
            reply, earliest = self._reply(kind, req)
            self.log.append(Arrival(time.time(), req.prompt, kind, earliest))
        return reply

    def _pick(self, prompt: str) -> str | None:
        """The n-th request of a prompt gets the same fate in every run (arrival order aside)."""
        self._seen[prompt] += 1
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
        rng = random.Random(f"{self.seed}|{digest}|{self._seen[prompt]}")
        roll, choice = rng.random(), rng.choice(self.kinds)
        if roll >= self.rate or self._faults_of[prompt] >= self.max_faults_per_prompt:
            return None
        if choice not in SUCCESS_FAULTS:
            self._faults_of[prompt] += 1
        return choice

    def _reply(self, kind: str | None, req: FakeRequest) -> tuple[FakeReply, float | None]:
        if kind is None:
            return _answer(self.inner, req), None
        now = time.time()
        if kind == "429_seconds":
            secs = str(self.retry_after_s)
            return (openai_error(429, "slow down", headers={"retry-after": secs}),
                    now + self.retry_after_s)
        if kind == "429_ms":
            ms = self.retry_after_ms
            return (openai_error(429, "slow down", headers={"retry-after-ms": str(ms)}),
                    now + ms / 1000.0)
        if kind == "429_date":
            when = int(now) + 1  # HTTP dates have whole seconds
            return (openai_error(429, "slow down", headers={"retry-after": formatdate(
                when, usegmt=True)}), float(when))
        if kind == "drip":
            reply = _answer(self.inner, req)
            reply.drip_s = self.drip_s
            return reply, None
        return _broken(kind, req), None

    # -- what a test reads afterwards --------------------------------------------------------
    def counts(self) -> Counter[str]:
        """Requests per fault kind ("ok" for untouched answers)."""
        return Counter(a.fault or "ok" for a in self.log)

    def by_prompt(self) -> dict[str, list[Arrival]]:
        out: dict[str, list[Arrival]] = {}
        for a in self.log:
            out.setdefault(a.prompt, []).append(a)
        return out


def _answer(inner: Responder, req: FakeRequest) -> FakeReply:
    reply = inner(req)
    assert isinstance(reply, FakeReply), "FaultInjector wraps synchronous responders only"
    return reply


def _anthropic_wire(req: FakeRequest) -> bool:
    return req.path.endswith("/messages")


_HUGE: list[bytes] = []


def _huge_body(req: FakeRequest) -> bytes:
    """A valid, oversized success body (built once: 4 MiB of filler text)."""
    if not _HUGE:
        _HUGE.append(b"x" * HUGE_BYTES)
    filler = _HUGE[0].decode("ascii")
    body: dict[str, object]
    if _anthropic_wire(req):
        body = {"type": "message", "role": "assistant", "model": req.model,
                "content": [{"type": "text", "text": filler}], "stop_reason": "end_turn"}
    else:
        body = {"object": "chat.completion", "model": req.model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": filler},
             "finish_reason": "stop"}]}
    return json.dumps(body).encode("ascii")


def _empty(req: FakeRequest) -> dict[str, object]:
    if _anthropic_wire(req):
        return {"id": "msg_empty", "type": "message", "role": "assistant", "model": req.model,
                "content": [], "stop_reason": "end_turn"}
    body: dict[str, object] = {"id": "chatcmpl-empty", "object": "chat.completion",
                               "model": req.model, "choices": []}
    return body


_BROKEN: dict[str, Callable[[FakeRequest], FakeReply]] = {
    "500": lambda req: openai_error(500, "internal error"),
    "502": lambda req: FakeReply(status=502, body="<html>bad gateway</html>",
                                 content_type="text/html"),
    "503": lambda req: openai_error(503, "unavailable"),
    "529": lambda req: openai_error(529, "site overloaded"),
    "anthropic_overloaded": lambda req: anthropic_error(529, "overloaded_error", "Overloaded"),
    "reset": lambda req: FakeReply(reset=True),
    "stall": lambda req: FakeReply(stall=True),
    "malformed_json": lambda req: FakeReply(body=b'{"choices": [{"message": {"content": "'),
    "wrong_content_type": lambda req: FakeReply(body=b"<html>maintenance</html>",
                                                content_type="text/html"),
    "huge_body": lambda req: FakeReply(body=_huge_body(req)),
    "empty_choices": lambda req: FakeReply(body=_empty(req)),
}


def _broken(kind: str, req: FakeRequest) -> FakeReply:
    return _BROKEN[kind](req)
