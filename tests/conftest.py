"""Shared fixtures: a fake server driven by the test module's own ``script`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakeserver import FakeLLMServer, Script


@pytest.fixture
def server(script: Script) -> Iterator[FakeLLMServer]:
    """A fake server answering with ``script`` (each module defines ``script``)."""
    with FakeLLMServer(script) as srv:
        yield srv
