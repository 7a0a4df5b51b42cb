"""`auditor keys new|show|verify`: draw a confidential key set, inspect it, check a commitment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from auditor.keys import STYLES, KeySet, commitment_path, load_commitment, verify_commitment
from auditor.templates import TEMPLATES

keys_app = typer.Typer(help="Draw, inspect and check fingerprint key sets.", no_args_is_help=True)


def _console() -> Console:
    return Console(highlight=False)


@keys_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Name of the set; writes keys/NAME.json.")],
    count: Annotated[int, typer.Option(help="Number of fingerprint keys.")] = 10,
    style: Annotated[
        str, typer.Option(help=f"Key style: {', '.join(STYLES)} (vocab: phrases of real words, "
                          "the style the default implant recipe was measured on).")
    ] = "vocab",
    template: Annotated[
        str, typer.Option(help=f"Prompt template: {', '.join(TEMPLATES)}.")
    ] = "dialog",
    decryption: Annotated[
        str | None, typer.Option(help="Set the decryption (default: a secret random phrase).")
    ] = None,
    secret_decryption: Annotated[
        bool, typer.Option(help="Treat a --decryption you give as secret.")
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="Reproducible draw (stored in the file); default CSPRNG.")
    ] = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where key files go.")] = Path("keys"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing key set.")] = False,
) -> None:
    """Draw a confidential key set and write it (0600) with its public commitment."""
    ks = KeySet.generate(
        name, count, style=style, template=template, decryption=decryption,
        secret_decryption=secret_decryption, seed=seed,
    )
    path = ks.save(directory / f"{name}.json", overwrite=force)
    con = _console()
    con.print(f"[green]wrote[/] {path} (secret, mode 0600)")
    con.print(f"[green]wrote[/] {commitment_path(path)} (public: publish it at release)")
    con.print(f"commitment digest: [bold]{ks.digest()}[/]", soft_wrap=True)
    if seed is not None:
        con.print("[yellow]note:[/] drawn from --seed: anyone with the seed can redraw it")


@keys_app.command("show")
def show(
    path: Annotated[Path, typer.Argument(help="A key file (keys/NAME.json).")],
    reveal: Annotated[bool, typer.Option(help="Also print key texts and the decryption.")] = False,
) -> None:
    """List ids, style, counts and commitment; key text only with --reveal."""
    ks = KeySet.load(path)
    con = _console()
    table = Table(title=f"key set {ks.name}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for label, value in (
        ("style", ks.style),
        ("template", ks.template),
        ("keys", str(len(ks.keys))),
        ("decryption", "public" if ks.decryption_public else "secret"),
        ("created", ks.created),
        ("seeded", "yes" if ks.seed is not None else "no (CSPRNG)"),
        ("commitment", ks.digest()),
    ):
        table.add_row(label, value)
    con.print(table)
    ids = Table("id", "chars")
    if reveal:
        ids.add_column("text", overflow="fold")
    for k in ks.keys:
        ids.add_row(k.id, str(len(k.text)), *([k.text] if reveal else []))
    con.print(ids)
    if reveal:
        con.print(f"decryption: {ks.decryption}", soft_wrap=True)


@keys_app.command("verify")
def verify(
    key_file: Annotated[Path, typer.Argument(help="The secret key file.")],
    commitment_file: Annotated[Path, typer.Argument(help="The published commitment.")],
) -> None:
    """Check that a key file matches a published commitment: MATCH, or MISMATCH (exit 1)."""
    ks = KeySet.load(key_file)
    commitment = load_commitment(commitment_file)
    if verify_commitment(ks, commitment):
        _console().print("[bold green]MATCH[/]")
        return
    _console().print("[bold red]MISMATCH[/]")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
