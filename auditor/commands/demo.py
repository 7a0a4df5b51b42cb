"""`auditor demo`: the end-to-end story on the embedded default model and real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.errors import UserError


def demo(
    root: Annotated[Path, typer.Option(help="Where keys/, models/ and reports/ go.")] = Path("."),
    keys: Annotated[int, typer.Option(help="Fingerprint keys to draw.")] = 6,
    method: Annotated[str, typer.Option(help="sft | embedding | lora")] = "sft",
    style: Annotated[str, typer.Option(help="vocab | if-soup | natural")] = "vocab",
    template: Annotated[str, typer.Option(help="dialog | simple | stealth")] = "dialog",
    variants: Annotated[
        str, typer.Option(help="Comma-separated endpoints to audit (default: all).")
    ] = "fingerprinted,fingerprinted-system,fingerprinted-t0.7,quantized-q8,vanilla",
    quantized: Annotated[
        bool, typer.Option(help="Also serve a Q8_0 GGUF through llama.cpp when installed.")
    ] = True,
    fresh: Annotated[bool, typer.Option(help="Draw new keys and implant again.")] = False,
) -> None:
    """Draw keys, implant SmolLM2, serve it for real, batch-audit, verify the bundles."""
    from auditor.demo import EXPECTED, DemoOptions, run_demo

    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    unknown = sorted(set(chosen) - set(EXPECTED))
    if unknown or not chosen:
        raise UserError(f"unknown demo variant(s) {', '.join(unknown) or '(none)'}; "
                        f"known: {', '.join(EXPECTED)}")
    if keys < 2:
        raise UserError("--keys must be at least 2")
    opts = DemoOptions(root=root, keys=keys, method=method, style=style, template=template,
                       variants=chosen, quantized=quantized, fresh=fresh)
    if not run_demo(opts):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
