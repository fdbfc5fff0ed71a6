"""API keys and roles. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac

from runpack.errors import Forbidden, Unauthorized
from runpack.protocol import Role
from runpack.settings import Settings

FORMAT_HINT = "Invalid Authorization header format. Use: Bearer <token>"


def bearer_token(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``, checked as the original did."""
    if not header:  # the original tested ``!authHeader``: an empty header is missing too
        raise Unauthorized("Missing Authorization header")
    parts = header.split(" ")
    if len(parts) != 2 or parts[0] != "Bearer":
        raise Unauthorized(FORMAT_HINT)
    return parts[1]


class KeyRing:
    """The three environment keys; answers which roles a token holds."""

    def __init__(self, settings: Settings) -> None:
        self._keys = {
            Role.SUBMIT: settings.submit_api_key.encode(),
            Role.RUNNER: settings.runner_api_key.encode(),
            Role.ADMIN: settings.admin_api_key.encode(),
        }
        self.runner_reads_admin = settings.runner_key_reads_admin

    def holder(self, token: str) -> Role | None:
        given = token.encode()
        found = None
        for role, key in self._keys.items():
            # Every key is compared, so timing says nothing about which matched.
            if key and hmac.compare_digest(given, key):
                found = role
        return found

    def authorize(self, header: str | None, required: Role) -> Role:
        """The caller's role if it may use a route that requires ``required``."""
        if required == Role.PUBLIC:
            return Role.PUBLIC
        holder = self.holder(bearer_token(header))
        if holder is None:
            raise Unauthorized("Invalid API key")
        if holder == required:
            return holder
        if holder == Role.ADMIN and required != Role.RUNNER:
            return holder  # the admin key opens every route but the runner's own
        if required == Role.ADMIN_READ and holder == Role.RUNNER and self.runner_reads_admin:
            return holder
        if required == Role.ADMIN and holder == Role.RUNNER:
            raise Forbidden("Admin key required", details="This key may read but not change jobs")
        raise Unauthorized("Invalid API key")
