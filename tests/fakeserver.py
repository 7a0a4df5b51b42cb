"""A scriptable fake LLM server speaking the OpenAI and Anthropic wire formats over loopback.

Stdlib asyncio HTTP/1.1 with keep-alive. All instances share one event-loop thread, so
hundreds of servers in one test process stay cheap. A *responder* decides each reply::

    with FakeLLMServer(echo_responder("hello")) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)

A reply can be delayed, dripped byte by byte, stalled forever or cut by a connection reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

_MAX_HEAD = 64 * 1024
_ids = itertools.count(1)


@dataclass
class FakeRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any | None
    t: float  # time.monotonic() at arrival

    @property
    def _messages(self) -> list[Any]:
        msgs = self.json.get("messages") if isinstance(self.json, dict) else None
        return msgs if isinstance(msgs, list) else []

    @property
    def prompt(self) -> str:
        """Last user message text (chat, Anthropic messages) or a legacy completion prompt."""
        if isinstance(self.json, dict) and "prompt" in self.json:
            p = self.json["prompt"]
            return p[-1] if isinstance(p, list) and p else str(p)
        for m in reversed(self._messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _content_text(m.get("content"))
        return ""

    @property
    def system(self) -> str | None:
        """System prompt: OpenAI system/developer message or Anthropic ``system`` field."""
        if isinstance(self.json, dict) and self.json.get("system") is not None:
            return _content_text(self.json["system"])
        for m in self._messages:
            if isinstance(m, dict) and m.get("role") in ("system", "developer"):
                return _content_text(m.get("content"))
        return None

    @property
    def model(self) -> str | None:
        m = self.json.get("model") if isinstance(self.json, dict) else None
        return str(m) if m is not None else None

    @property
    def temperature(self) -> float | None:
        t = self.json.get("temperature") if isinstance(self.json, dict) else None
        return float(t) if isinstance(t, int | float) else None


def _content_text(content: Any) -> str:
    """Text of a message content: a string or a list of parts/blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass
class FakeReply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    delay_s: float = 0.0  # wait before answering
    drip_s: float = 0.0  # send the body slowly, byte chunks spaced by drip_s
    stall: bool = False  # never answer (until the server stops)
    reset: bool = False  # close the connection without answering
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


Responder = Callable[[FakeRequest], FakeReply | Awaitable[FakeReply]]


class _LoopThread:
    """One daemon thread running an event loop shared by every FakeLLMServer."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="fakeserver-loop", daemon=True)
                t.start()
                cls._loop = loop
            return cls._loop


class FakeLLMServer:
    """A loopback HTTP server whose every reply comes from ``responder``."""

    def __init__(self, responder: Responder, *, latency_s: float = 0.0) -> None:
        self.responder = responder
        self.latency_s = latency_s
        self.requests: list[FakeRequest] = []
        self.url = ""
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None

    def start(self) -> FakeLLMServer:
        if self._server is not None:
            return self
        self._loop = _LoopThread.get()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = fut.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _start(self) -> int:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, limit=_MAX_HEAD, backlog=512
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._server = None

    async def _stop(self) -> None:
        assert self._server is not None and self._stopping is not None
        self._stopping.set()
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        await self._server.wait_closed()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connection handling ------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                ValueError, asyncio.CancelledError):
            pass  # client went away, garbage request, or the server is stopping
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
        """Read one request, write one reply; False when the connection should close."""
        req = await _read_request(reader)
        if req is None:
            return False
        with self._lock:
            self.requests.append(req)
        reply = self.responder(req)
        if inspect.isawaitable(reply):
            reply = await reply
        assert isinstance(reply, FakeReply)
        wait = self.latency_s + reply.delay_s
        if wait > 0:
            await asyncio.sleep(wait)
        if reply.stall:
            assert self._stopping is not None
            await self._stopping.wait()
            return False
        if reply.reset:
            writer.transport.abort()
            return False
        await _write_reply(writer, reply)
        return req.headers.get("connection", "").lower() != "close"


async def _read_request(reader: asyncio.StreamReader) -> FakeRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    t = time.monotonic()
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    parsed: Any | None = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return FakeRequest(method, path.split("?", 1)[0], headers, body, parsed, t)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


async def _write_reply(writer: asyncio.StreamWriter, reply: FakeReply) -> None:
    body = reply.body_bytes()
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Status"
    head = [f"HTTP/1.1 {reply.status} {phrase}", f"content-type: {reply.content_type}",
            f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in reply.headers.items()
             if k.lower() not in ("content-length", "content-type")]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if reply.drip_s > 0 and body:
        step = max(1, len(body) // 64)
        for i in range(0, len(body), step):
            writer.write(body[i:i + step])
            await writer.drain()
            await asyncio.sleep(reply.drip_s)
    else:
        writer.write(body)
    await writer.drain()


# -- reply builders ---------------------------------------------------------------------

def _usage_words(text: str) -> int:
    return max(1, len(text.split()))


def openai_chat(text: str, *, model: str = "fake-model", finish_reason: str = "stop") -> FakeReply:
    n = next(_ids)
    body = {
        "id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": _usage_words(text),
                  "total_tokens": 5 + _usage_words(text)},
    }
    return FakeReply(body=body, headers={"x-request-id": f"req_fake{n}"})


def openai_completion(text: str, *, model: str = "fake-model") -> FakeReply:
    n = next(_ids)
    body = {
        "id": f"cmpl-fake{n}", "object": "text_completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": _usage_words(text),
                  "total_tokens": 5 + _usage_words(text)},
    }
    return FakeReply(body=body, headers={"x-request-id": f"req_fake{n}"})


def anthropic_message(text: str, *, model: str = "fake-claude",
                      stop_reason: str = "end_turn") -> FakeReply:
    n = next(_ids)
    body = {
        "id": f"msg_fake{n}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": _usage_words(text)},
    }
    return FakeReply(body=body, headers={"request-id": f"req_fake{n}"})


def openai_error(status: int, message: str = "fake error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> FakeReply:
    body = {"error": {"message": message, "type": code or "api_error", "param": None,
                      "code": code}}
    return FakeReply(status=status, body=body,
                     headers={"x-request-id": f"req_err{next(_ids)}", **(headers or {})})


def anthropic_error(status: int, type_: str = "overloaded_error", message: str = "fake error",
                    headers: dict[str, str] | None = None) -> FakeReply:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return FakeReply(status=status, body=body,
                     headers={"request-id": f"req_err{next(_ids)}", **(headers or {})})


def wire_reply(req: FakeRequest, text: str) -> FakeReply:
    """The right success body for the wire format of ``req`` (chosen by path)."""
    model = req.model or "fake-model"
    if req.path.endswith("/messages"):
        return anthropic_message(text, model=model)
    if req.path.endswith("/chat/completions"):
        return openai_chat(text, model=model)
    if req.path.endswith("/completions"):
        return openai_completion(text, model=model)
    return openai_error(404, f"no route {req.path}")


class Script:
    """A responder: queued replies first (``replies``), then ``default(req)`` for the rest."""

    def __init__(self, *replies: FakeReply,
                 default: Callable[[FakeRequest], FakeReply] | None = None) -> None:
        self.replies = list(replies)
        self.default = default or (lambda req: wire_reply(req, "ok"))

    def __call__(self, req: FakeRequest) -> FakeReply:
        return self.replies.pop(0) if self.replies else self.default(req)


def echo_responder(text: str) -> Responder:
    """A responder answering ``text`` to every request, in the request's wire format."""

    def respond(req: FakeRequest) -> FakeReply:
        return wire_reply(req, text)

    return respond
