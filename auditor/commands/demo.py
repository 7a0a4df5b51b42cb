"""CLI verbs of this group (being built; see the issue tracker)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this group's verbs to the app."""
