"""Errors the CLI turns into one clear message and an exit code.

UserError (exit 2)     bad input: malformed file, wrong permissions, unknown id, bad option
AuditFailed (exit 1)   the job could not complete (evidence so far is kept)

Messages never contain fingerprint key text, the decryption or credentials.
"""

from __future__ import annotations


class UserError(Exception):
    exit_code = 2


class KeyFileError(UserError):
    """A key file that cannot be trusted: unreadable, too open, malformed, newer, altered."""


class AuditFailed(Exception):
    exit_code = 1
