"""Requests-per-minute limiting around a provider (retries included: they are requests too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import (
        Capabilities,
        Completion,
        Message,
        Provider,
        RetryDecision,
        SampleParams,
    )


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts beyond one)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.interval <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class LimitedProvider:
    """A provider whose every attempt first passes the endpoint's rate limiter."""

    def __init__(self, inner: Provider, rpm: float | None) -> None:
        self.inner = inner
        self.limiter = RateLimiter(rpm)
        self.endpoint_id = inner.endpoint_id
        self.model = inner.model

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        await self.limiter.acquire()
        return await self.inner.generate(messages, params)

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return self.inner.classify_error(exc)

    def concurrency_key(self) -> str:
        return self.inner.concurrency_key()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    async def aclose(self) -> None:
        await self.inner.aclose()
