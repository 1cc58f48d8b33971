"""The write token: read-only without it, ``Authorization: Bearer <token>`` for writes.

``serve`` takes ``--token`` or makes a random one at start-up and prints it (``--read_only``:
no writes at all). Tokens are compared in constant time.
"""

from __future__ import annotations

import secrets

from fastapi import Header, HTTPException


def new_token() -> str:
    return secrets.token_urlsafe(24)


class WriteGuard:
    """A FastAPI dependency: raises 401/403 unless the request carries the token."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(self, authorization: str | None = Header(default=None)) -> None:
        if self.token is None:
            raise HTTPException(403, "this server is read-only (started with --read_only)")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(
                401,
                "writes need 'Authorization: Bearer <token>' (the token serve printed at start)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(403, "wrong token")
