"""Shared fixtures: a fake server driven by the test module's own ``script`` fixture, a tiny
random model per module, and one model cache for the whole run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeserver import FakeLLMServer, Script
from tests.tiny_model import make_tiny_model


@pytest.fixture
def server(script: Script) -> Iterator[FakeLLMServer]:
    """A fake server answering with ``script`` (each module defines ``script``)."""
    with FakeLLMServer(script) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-style checkpoint (tests/tiny_model.py), made once per module."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def shared_cache(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """AUDITOR_CACHE in the run's temporary root: the base's answers to the regularization
    prompts are made once for every test that asks (modules take it with usefixtures)."""
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
