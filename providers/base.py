"""The provider contract: one attempt in, a typed result or a classified error out.

Exception tree::

    ProviderError                 every failure a provider raises (status, request_id, body)
    ├── ConfigError               bad endpoint spec or missing credential variable (never retried)
    ├── TerminalError             the server said no; retrying will not help
    │   ├── BadRequestError       400, 422
    │   ├── AuthError             401
    │   ├── PermissionDeniedError 403
    │   ├── NotFoundError         404 (unknown model or path)
    │   └── QuotaExhaustedError   429 "insufficient_quota" and alike
    └── TransientError            may succeed on a later attempt
        ├── RateLimitedError      429 (retry_after_s when the server said)
        ├── OverloadedError       529 / Anthropic "overloaded_error"
        ├── ServerError           408, 409, 5xx
        ├── TimeoutError_         no answer within the attempt timeout
        ├── ConnectionFailed      refused, reset, DNS
        └── MalformedResponseError bad JSON, wrong content type, oversize body, no choices

Providers never retry; the engine above (``auditor.retry``) owns that. Messages of these
errors never contain prompt text or credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __repr__(self) -> str:  # never show prompt text (it may be a fingerprint key)
        return f"Message(role={self.role!r}, chars={len(self.content)})"

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class SampleParams:
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    timeout_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
            "system_prompt": self.system_prompt,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    model: str | None  # the model name the server says it used
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    request_id: str | None = None
    raw_request: Mapping[str, Any] = field(default_factory=dict)
    raw_response: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Completion(chars={len(self.text)}, finish_reason={self.finish_reason!r}, "
            f"model={self.model!r}, latency_s={self.latency_s:.3f})"
        )


@dataclass(frozen=True)
class Capabilities:
    seed: bool = False
    logprobs: bool = False
    system_prompt: bool = True
    completion_mode: bool = False


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    rate_limited: bool = False
    retry_after_s: float | None = None  # what the server asked for, if it did
    reason: str = ""


class ProviderError(Exception):
    """Base of every provider failure. ``str()`` never includes prompts or credentials."""

    kind = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        body: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.body = body[:2000] if body else body
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "message": self.message,
            "status": self.status,
            "request_id": self.request_id,
            "retry_after_s": self.retry_after_s,
        }


class ConfigError(ProviderError):
    kind = "config"


class TerminalError(ProviderError):
    kind = "terminal"


class BadRequestError(TerminalError):
    kind = "bad_request"


class AuthError(TerminalError):
    kind = "auth"


class PermissionDeniedError(TerminalError):
    kind = "permission_denied"


class NotFoundError(TerminalError):
    kind = "not_found"


class QuotaExhaustedError(TerminalError):
    kind = "quota_exhausted"


class TransientError(ProviderError):
    kind = "transient"


class RateLimitedError(TransientError):
    kind = "rate_limited"


class OverloadedError(TransientError):
    kind = "overloaded"


class ServerError(TransientError):
    kind = "server_error"


class TimeoutError_(TransientError):  # trailing underscore: not the builtin
    kind = "timeout"


class ConnectionFailed(TransientError):
    kind = "connection"


class MalformedResponseError(TransientError):
    kind = "malformed_response"


def classify(exc: BaseException) -> RetryDecision:
    """Default classification of a provider error into a retry decision."""
    if isinstance(exc, RateLimitedError):
        return RetryDecision(True, rate_limited=True, retry_after_s=exc.retry_after_s,
                             reason=exc.kind)
    if isinstance(exc, TransientError):
        return RetryDecision(True, retry_after_s=exc.retry_after_s, reason=exc.kind)
    if isinstance(exc, ProviderError):
        return RetryDecision(False, reason=exc.kind)
    return RetryDecision(False, reason=type(exc).__name__)


def error_from_status(
    status: int,
    message: str,
    *,
    request_id: str | None = None,
    body: str | None = None,
    retry_after_s: float | None = None,
    code: str | None = None,
) -> ProviderError:
    """Map an HTTP status (and error code) to the typed error tree."""
    kw: dict[str, Any] = {"status": status, "request_id": request_id, "body": body,
                          "retry_after_s": retry_after_s}
    quota = code in {"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"}
    if status == 429 and quota:
        return QuotaExhaustedError(message, **kw)
    table: dict[int, type[ProviderError]] = {
        400: BadRequestError, 422: BadRequestError, 401: AuthError,
        403: PermissionDeniedError, 404: NotFoundError, 429: RateLimitedError,
        529: OverloadedError, 408: ServerError, 409: ServerError,
    }
    if code == "overloaded_error":
        return OverloadedError(message, **kw)
    cls = table.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequestError
    return cls(message, **kw)


@runtime_checkable
class Provider(Protocol):
    """One endpoint. ``generate`` makes exactly one attempt."""

    endpoint_id: str
    model: str

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion: ...

    def classify_error(self, exc: BaseException) -> RetryDecision: ...

    def concurrency_key(self) -> str: ...

    def capabilities(self) -> Capabilities: ...

    async def aclose(self) -> None: ...
