"""trackop.redaction: one rule for masking secrets in text meant for people (pure)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from trackop.redaction import redact


def test_redact_raw_and_url_encoded_forms():
    secret = "p@ss:/w%rd#?&= ü"
    uri = f"postgresql+psycopg://role:{quote(secret, safe='')}@pg:5432/db"
    text = f"failed with {secret} via {uri}"
    redacted = redact(text, [secret])
    assert secret not in redacted
    assert quote(secret, safe="") not in redacted
    assert redacted == "failed with *** via postgresql+psycopg://role:***@pg:5432/db"


def test_redact_several_secrets_and_every_occurrence():
    text = "alpha1 beta22 alpha1 gamma"
    assert redact(text, ["alpha1", "beta22"]) == "*** *** *** gamma"


@pytest.mark.parametrize("short", ["", "a", "ab", "abc"])
def test_redact_ignores_very_short_strings(short):
    text = "a cat sat on abc mat"
    assert redact(text, [short]) == text


def test_redact_four_characters_is_enough():
    assert redact("token=abcd;", ["abcd"]) == "token=***;"


def test_redact_without_secrets_returns_the_text():
    assert redact("nothing here", []) == "nothing here"
    assert redact("nothing here", ["absent-secret"]) == "nothing here"


def test_redact_masks_every_secret_and_the_longest_first():
    url = "postgresql+psycopg://r:s3cret@h:5432/db"
    text = f"failed on {url}; password s3cret; again s3cret"
    assert redact(text, [None, "", "s3cret", url]) == "failed on ***; password ***; again ***"
    assert redact("nothing here", ["s3cret"]) == "nothing here"
