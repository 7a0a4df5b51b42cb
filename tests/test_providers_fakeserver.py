"""The fake server itself: concurrency, cheap instances, keep-alive, drip, request parsing."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from tests.fakeserver import (
    FakeLLMServer,
    FakeReply,
    FakeRequest,
    anthropic_message,
    echo_responder,
)


async def test_64_concurrent_requests_overlap() -> None:
    with FakeLLMServer(echo_responder("hi"), latency_s=0.2) as srv:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=srv.url, limits=limits) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
            for _round in range(2):  # the second round reuses kept-alive connections
                t0 = time.monotonic()
                replies = await asyncio.gather(*[
                    client.post("/v1/chat/completions", json=body) for _ in range(64)])
                elapsed = time.monotonic() - t0
                assert all(r.status_code == 200 for r in replies)
                assert all(r.json()["choices"][0]["message"]["content"] == "hi"
                           for r in replies)
                assert 0.2 <= elapsed < 4.0  # served in parallel, not 64 x 200 ms (12.8 s)
        assert len(srv.requests) == 128


def test_hundreds_of_instances_share_one_thread() -> None:
    threads_before = threading.active_count()
    servers = [FakeLLMServer(echo_responder(f"s{i}")).start() for i in range(200)]
    try:
        assert threading.active_count() <= threads_before + 1
        assert len({s.url for s in servers}) == 200
        with httpx.Client() as client:
            for i in (0, 99, 199):
                r = client.post(servers[i].url + "/v1/completions", json={"prompt": "x"})
                assert r.json()["choices"][0]["text"] == f"s{i}"
    finally:
        for s in servers:
            s.stop()
    assert all(not s.requests or len(s.requests) == 1 for s in servers)


def test_drip_delay_and_headers() -> None:
    reply = anthropic_message("z" * 500)
    reply.drip_s = 0.01
    reply.delay_s = 0.2
    reply.headers["retry-after"] = "4"
    with FakeLLMServer(lambda req: reply) as srv, httpx.Client() as client:
        t0 = time.monotonic()
        r = client.post(srv.url + "/v1/messages", json={"messages": []})
        elapsed = time.monotonic() - t0
    assert r.json()["content"][0]["text"] == "z" * 500
    assert r.headers["retry-after"] == "4" and r.headers["request-id"].startswith("req_fake")
    assert elapsed >= 0.2 + 0.5  # delay, then ~64 chunks 10 ms apart


def test_request_views_for_each_wire_format() -> None:
    seen: list[FakeRequest] = []

    async def respond(req: FakeRequest) -> FakeReply:  # async responders are awaited
        seen.append(req)
        return FakeReply(status=204, body=None)

    with FakeLLMServer(respond) as srv, httpx.Client(base_url=srv.url) as client:
        client.post("/v1/chat/completions", json={
            "model": "a", "temperature": 0.3, "messages": [
                {"role": "system", "content": "SYS"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": [{"type": "text", "text": "u2"}]}]})
        client.post("/v1/messages", json={"model": "c", "system": [{"type": "text",
                                                                      "text": "AS"}],
                                          "messages": [{"role": "user", "content": "m1"}]})
        client.post("/v1/completions?x=1", json={"model": "b", "prompt": ["p0", "p1"]})
        client.post("/v1/chat/completions", content=b"not json")
    chat, msgs, legacy, junk = seen
    assert (chat.prompt, chat.system, chat.model, chat.temperature) == ("u2", "SYS", "a", 0.3)
    assert (msgs.prompt, msgs.system, msgs.model, msgs.temperature) == ("m1", "AS", "c", None)
    assert (legacy.path, legacy.prompt, legacy.system) == ("/v1/completions", "p1", None)
    assert junk.json is None and junk.body == b"not json" and junk.prompt == ""
    assert chat.t <= msgs.t <= legacy.t <= junk.t


def test_stop_releases_stalled_requests() -> None:
    srv = FakeLLMServer(lambda req: FakeReply(stall=True)).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(srv.url + "/v1/completions", json={}, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 5
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    srv.stop()
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - t0 < 3
    assert len(errors) == 1  # the client saw the connection close, not a reply
