"""Masking secrets in text meant for people: conditions, Events, logs, error messages (pure).

One rule for every caller: each secret of at least ``MIN_SECRET_LENGTH`` characters, in
its raw and URL-encoded forms, longest first, so a URL is masked whole before the
password inside it. Shorter strings are left alone: masking ``ab`` would garble messages
and hide nothing a reader could use.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

MIN_SECRET_LENGTH = 4
MASK = "***"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret (raw or URL-encoded) replaced by ``***``."""
    forms = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            forms.add(secret)
            forms.add(quote(secret, safe=""))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
