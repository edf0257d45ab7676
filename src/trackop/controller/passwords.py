"""Passwords trackop generates (the role's, a managed server's superuser's): once, then kept."""

from __future__ import annotations

import secrets

GENERATED_PASSWORD_BYTES = 32  # token_urlsafe(32): 43 characters


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
