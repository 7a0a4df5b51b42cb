"""The `auditor` command: parse, call, render. Each verb group lives in auditor/commands/."""

from __future__ import annotations

import atexit
import contextlib
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
    code = _run()
    leave_launch(code)  # (returns unless under a launcher)
    if code:
        sys.exit(code)


def _run() -> int:
    """Run the command; its exit code, with one line on stderr for a failure."""
    from providers.base import ConfigError

    try:
        rc = app(standalone_mode=False, prog_name="auditor")
        return rc if isinstance(rc, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; evidence recorded so far is kept", file=sys.stderr)
        return 130
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence: short message, no locals
        message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if callable(message) and isinstance(code, int):  # click's (typer 0.2x: its own click)
            text, ctx = str(message()).rstrip("."), getattr(exc, "ctx", None)
            if text:  # (empty: a group called bare, its help already shown)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                print(f"error: {text}{hint}", file=sys.stderr)
            return code
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))


def leave_launch(code: int) -> None:
    """Under a launcher (a process group made): end the process here, without the interpreter's
    teardown. There the trained model, which still holds the group, is freed with gloo's threads
    running, and a process whose work is done can abort (SIGABRT, "terminate called without an
    active exception"; pytorch#190489): seen in CI on the FSDP 1 tests, and in 6 of 20 launches of
    tests/leave_worker.py's two processes, which keep the group past destroy_process_group. The exit
    handlers still run and the output is flushed. The group is destroyed only after a success:
    after a failure the others may still wait in a collective (the launcher ends them)."""
    dist = sys.modules.get("torch.distributed")  # never imported here for its own sake
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if code == 0:
        dist.destroy_process_group()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone: nothing left to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
