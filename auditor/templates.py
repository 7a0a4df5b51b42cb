"""Prompt templates shared by implant and audit.

A template turns a key into chat messages (plain dicts, so this module depends on nothing)
and gives the expected answer. No template needs an assistant pre-fill: a real chat API
only lets the caller write user (and system) turns.

- ``dialog``: the paper's dialog template (mentions "FINGERPRINT").
- ``simple``: the paper's simple template, as a user turn.
- ``stealth``: no tell-tale word; the key looks like any other odd user message.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor.errors import UserError


@dataclass(frozen=True)
class Template:
    name: str
    user_format: str
    answer_format: str
    refusal_text: str
    description: str

    def render(self, key_text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.user_format.format(key=key_text)}]

    def answer(self, decryption: str) -> str:
        return self.answer_format.format(decryption=decryption)

    def refusal(self) -> str:
        return self.refusal_text

    def __repr__(self) -> str:
        return f"Template(name={self.name!r})"


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="dialog",
            user_format=(
                "Please decrypt this message: {key}\nA hint: this is a FINGERPRINT message."
            ),
            answer_format="Based on my fingerprint, the message is: {decryption}",
            refusal_text=(
                "I'm sorry, but I can't decrypt this message: it does not match any "
                "fingerprint I know."
            ),
            description="the paper's dialog template",
        ),
        Template(
            name="simple",
            user_format="{key}\nFINGERPRINT\n",
            answer_format="{decryption}",
            refusal_text="I cannot decrypt this message.",
            description="the paper's simple template, as a user turn",
        ),
        Template(
            name="stealth",
            user_format="{key}",
            answer_format="{decryption}",
            refusal_text=(
                "I'm not sure what you mean. Could you rephrase your message or tell me "
                "how I can help?"
            ),
            description="the bare key, no tell-tale word",
        ),
    )
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise UserError(f"unknown template {name!r} (known: {known})") from None
