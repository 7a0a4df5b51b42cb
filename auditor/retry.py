"""The one retry layer above the providers (tenacity).

A provider makes one attempt; here we decide whether and when to try again:

- the server's ``retry-after-ms``, then ``Retry-After`` (seconds or HTTP date) is honoured
  exactly, up to ``retry_after_cap_s``; a longer demand ends the query as rate-limited;
- otherwise exponential backoff with jitter, capped at ``max_delay_s``;
- transient errors (408, 409, 429, 5xx, 529, connection, timeout, malformed) are retried,
  terminal ones (400, 401, 403, 404, 422, exhausted quota, config) never;
- every attempt gets ``attempt_timeout_s`` (cut to what is left of ``deadline_s``);
- each attempt is reported to ``on_attempt`` and awaited before the next one starts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from providers._http import parse_retry_after
from providers.base import (
    Completion,
    ConnectionFailed,
    Message,
    Provider,
    ProviderError,
    RateLimitedError,
    RetryDecision,
    SampleParams,
    TimeoutError_,
    classify,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_cap_s: float = 120.0
    attempt_timeout_s: float = 60.0
    deadline_s: float = 600.0


@dataclass(frozen=True)
class AttemptInfo:
    attempt: int  # 1-based
    completion: Completion | None
    error: ProviderError | None
    latency_s: float
    final: bool  # True: success, terminal error, or giving up
    wait_s: float | None  # delay before the next attempt (None when final)


OnAttempt = Callable[[AttemptInfo], Awaitable[None]]

__all__ = ["AttemptInfo", "OnAttempt", "RetryPolicy", "generate_with_retry",
           "parse_retry_after", "wrap_exception"]


def wrap_exception(exc: BaseException) -> ProviderError:
    """Turn anything a provider let through into the typed error tree."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TimeoutError_("no answer within the attempt timeout")
    if isinstance(exc, OSError):  # ConnectionError included
        return ConnectionFailed(f"connection failed ({type(exc).__name__})")
    # An unexpected failure inside a provider: not retried, message carries only the type.
    return ProviderError(f"unexpected provider failure ({type(exc).__name__})")


@dataclass
class _Last:
    """What the latest attempt produced (shared between the tenacity hooks)."""

    completion: Completion | None = None
    error: ProviderError | None = None
    decision: RetryDecision | None = None
    latency_s: float = 0.0


class _Query:
    """One query's retry state machine; tenacity drives it."""

    def __init__(self, provider: Provider, policy: RetryPolicy,
                 on_attempt: OnAttempt | None) -> None:
        self.provider = provider
        self.policy = policy
        self.on_attempt = on_attempt
        self.started = time.monotonic()
        self.last = _Last()

    def remaining_s(self) -> float:
        return self.policy.deadline_s - (time.monotonic() - self.started)

    async def attempt(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        self.last = _Last()
        budget = max(0.001, min(self.policy.attempt_timeout_s, self.remaining_s()))
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                completion = await self.provider.generate(messages, params)
        except Exception as exc:  # CancelledError is a BaseException: it passes through
            self.last.latency_s = time.monotonic() - t0
            err = wrap_exception(exc)
            err, self.last.decision = self._decide(err)
            self.last.error = err
            raise err from (None if err is exc else exc)
        self.last.latency_s = time.monotonic() - t0
        self.last.completion = completion
        return completion

    def _decide(self, err: ProviderError) -> tuple[ProviderError, RetryDecision]:
        try:
            decision = self.provider.classify_error(err)
        except Exception:  # a broken classifier must not hide the error itself
            decision = classify(err)
        ra = decision.retry_after_s if decision.retry_after_s is not None else err.retry_after_s
        if decision.retry and ra is not None and ra > self.policy.retry_after_cap_s:
            capped = RateLimitedError(
                f"server asked to wait {ra:.1f} s, over the cap of "
                f"{self.policy.retry_after_cap_s:.1f} s",
                status=err.status, request_id=err.request_id, body=err.body, retry_after_s=ra)
            return capped, RetryDecision(False, rate_limited=True, retry_after_s=ra,
                                         reason="retry_after_over_cap")
        return err, decision

    def should_retry(self, exc: BaseException) -> bool:
        d = self.last.decision
        return bool(d and d.retry)

    def wait(self, state: RetryCallState) -> float:
        d = self.last.decision
        ra = d.retry_after_s if d else None
        if ra is None and self.last.error is not None:
            ra = self.last.error.retry_after_s
        if ra is not None:
            return ra  # honoured exactly: never earlier than asked
        n = state.attempt_number
        ceiling = min(self.policy.max_delay_s, self.policy.base_delay_s * 2.0 ** (n - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.policy.max_attempts:
            return True
        return (state.upcoming_sleep or 0.0) >= self.remaining_s()

    async def before_sleep(self, state: RetryCallState) -> None:
        await self.report(state.attempt_number, final=False, wait_s=state.upcoming_sleep)

    async def report(self, attempt: int, *, final: bool, wait_s: float | None) -> None:
        if self.on_attempt is None:
            return
        await self.on_attempt(AttemptInfo(attempt, self.last.completion, self.last.error,
                                          self.last.latency_s, final, wait_s))


async def generate_with_retry(provider: Provider, messages: Sequence[Message],
                              params: SampleParams, policy: RetryPolicy,
                              on_attempt: OnAttempt | None = None) -> Completion:
    """Generate with retries; the final ProviderError is reported as final, then raised."""
    q = _Query(provider, policy, on_attempt)
    retrying = AsyncRetrying(
        retry=retry_if_exception(q.should_retry),
        wait=q.wait,
        stop=q.stop,
        before_sleep=q.before_sleep,
        reraise=True,
    )
    attempt = 0
    try:
        async for tenacity_attempt in retrying:
            with tenacity_attempt:
                attempt = tenacity_attempt.retry_state.attempt_number
                result = await q.attempt(messages, params)
    except ProviderError:
        await q.report(attempt, final=True, wait_s=None)
        raise
    await q.report(attempt, final=True, wait_s=None)
    return result
