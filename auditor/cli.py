"""The `auditor` command: parse, call, render. Each verb group lives in auditor/commands/."""

from __future__ import annotations

import os
import sys

import typer

from auditor.commands import audit, demo, implant, keys, probe, report
from auditor.errors import UserError

app = typer.Typer(
    name="auditor",
    help="Instructional-fingerprint auditor: implant, audit and prove model ownership.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (keys, probe, audit, report, implant, demo):
    module.register(app)


def main() -> None:
    """Entry point: one clear message and an exit code instead of a traceback."""
    from providers.base import ConfigError

    try:
        rc = app(standalone_mode=False)
        _close_process_group()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; evidence recorded so far is kept", file=sys.stderr)
        sys.exit(130)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # the last line of defence: short message, no locals
        import click

        if isinstance(exc, click.exceptions.UsageError):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))


def _close_process_group() -> None:
    """Under a launcher, after a command that ended well: destroy the process group. Left to
    the interpreter's teardown, gloo's threads can abort a process whose work is done (SIGABRT,
    "terminate called without an active exception"; pytorch#190489; seen once in CI on an FSDP
    test). Not after a failure: the others may still wait in a collective."""
    dist = sys.modules.get("torch.distributed")  # never imported here for its own sake
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
