"""Server warm-up: a batching server's sampling is fixed by its first request."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import AuditFailed
from auditor.servers import Server, transformers_server
from tests.fakeserver import FakeLLMServer, Script, openai_error


def _pointing_at(srv: FakeLLMServer, tmp_path: Path, temperature: float | None) -> Server:
    port = int(srv.url.rsplit(":", 1)[1])
    return Server("fp", "/models/fp", port, ["serve"], tmp_path / "fp.log",
                  warmup_temperature=temperature)


def test_warm_up_sends_one_request_at_the_servers_temperature(tmp_path: Path) -> None:
    with FakeLLMServer(Script()) as srv:
        _pointing_at(srv, tmp_path, 0.7).warm_up()
        _pointing_at(srv, tmp_path, None).warm_up()  # a plain server needs none
    assert len(srv.requests) == 1
    body = srv.requests[0].json
    assert body is not None and srv.requests[0].path == "/v1/chat/completions"
    assert body["temperature"] == 0.7 and body["model"] == "/models/fp" and body["max_tokens"] <= 4


def test_a_failed_warm_up_is_one_clear_error(tmp_path: Path) -> None:
    with FakeLLMServer(Script(openai_error(500, "boom"))) as srv, \
            pytest.raises(AuditFailed, match=r"server fp failed its warm-up request.*fp\.log"):
        _pointing_at(srv, tmp_path, 0.0).warm_up(timeout_s=10)


def test_only_batching_servers_get_the_batching_flags(tmp_path: Path) -> None:
    plain = transformers_server("v", tmp_path, tmp_path)
    batched = transformers_server("v", tmp_path, tmp_path, batching_temperature=0.0)
    assert not plain.batching and plain.warmup_temperature is None
    assert batched.batching and batched.warmup_temperature == 0.0
    # the paged KV cache is capped (by default it claims most of the RAM)
    assert "--cb-num-blocks" in batched.argv and "--cb-num-blocks" not in plain.argv
