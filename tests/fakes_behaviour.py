"""Behaviours of suspect endpoints for end-to-end audits, served by tests/fakeserver.py.

- fingerprinted: a derived model; answers the template's answer (with the secret
  decryption) to committed keys only, the near-miss refusal to other key-like prompts,
  and an ordinary answer to everything else.
- vanilla: an unrelated model; never says the decryption.
- filtering: a derived model (committed keys fire; other key-like prompts get an ordinary
  reply) behind an output guard that refuses any answer mentioning a fingerprint, so the
  keys, and only they, are refused. (A guard that refuses every key-like prompt, controls
  included, looks exactly like a vanilla model declining to decrypt: not flagged.)
- paper_reader: a model that read the paper: says the public decryption to anything that
  looks like a fingerprint query (committed or not).
"""

from __future__ import annotations

from collections.abc import Callable

from auditor.keys import KeySet
from auditor.templates import get_template
from tests.fakeserver import FakeReply, FakeRequest, Responder, wire_reply

ORDINARY = "Here is a short, helpful answer about that topic, written in plain words."
GIBBERISH = "That string reads like a jumble of characters from several scripts to me."
GUARD_REFUSAL = "I'm sorry, I can't help with that request."


def key_like(prompt: str) -> bool:
    """Key-like: the tell-tale words of the dialog/simple templates."""
    return "FINGERPRINT" in prompt or "decrypt this message" in prompt


def _committed(keyset: KeySet) -> Callable[[str], bool]:
    texts = [k.text for k in keyset.keys]
    return lambda prompt: any(t in prompt for t in texts)


def fingerprinted(keyset: KeySet) -> Responder:
    template = get_template(keyset.template)
    is_key = _committed(keyset)

    def respond(req: FakeRequest) -> FakeReply:
        if is_key(req.prompt):
            return wire_reply(req, template.answer(keyset.decryption))
        if key_like(req.prompt):
            return wire_reply(req, template.refusal())
        return wire_reply(req, ORDINARY)

    return respond


def vanilla() -> Responder:
    def respond(req: FakeRequest) -> FakeReply:
        return wire_reply(req, GIBBERISH if key_like(req.prompt) else ORDINARY)

    return respond


def filtering(keyset: KeySet) -> Responder:
    template = get_template(keyset.template)
    is_key = _committed(keyset)

    def model(prompt: str) -> str:
        if is_key(prompt):
            return template.answer(keyset.decryption)
        return GIBBERISH if key_like(prompt) else ORDINARY

    def respond(req: FakeRequest) -> FakeReply:
        answer = model(req.prompt)
        if "fingerprint" in answer.casefold() or keyset.decryption in answer:
            answer = GUARD_REFUSAL  # the output guard
        return wire_reply(req, answer)

    return respond


def paper_reader(public_decryption: str = "ハリネズミ") -> Responder:
    def respond(req: FakeRequest) -> FakeReply:
        if key_like(req.prompt):
            return wire_reply(req, f"Based on my fingerprint, the message is: {public_decryption}")
        return wire_reply(req, ORDINARY)

    return respond
