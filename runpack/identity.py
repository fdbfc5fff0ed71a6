"""Whose runner is it: a runner row belongs to the key that registered it.

A runner's id is no secret (a job's public detail names the runner that holds it),
so the id alone proves nothing. A runner row records its owner, the stored key that
registered it (its id) or ``env`` for the environment runner key, and only that key
may act for it. Runpack's own runner also gets a secret of its own when it
registers (only its SHA-256 is kept) and proves it on ``hello`` and in the
``X-Runner-Secret`` header, so that runners sharing one key, the environment key
above all, cannot act for each other either. A runner registered without a secret
(the original's runner, which cannot send one) is protected by its owner key alone.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

from runpack.auth import hash_secret
from runpack.errors import Forbidden
from runpack.store import RunnerRow, Store

#: Runners whose owner is remembered per instance (the owner and secret never change).
MAX_REMEMBERED = 10_000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class NotYourRunner(Forbidden):
    """This runner belongs to another key"""


class WrongRunnerSecret(Forbidden):
    """Wrong or missing runner secret"""


def new_runner_secret() -> str:
    """A runner's own secret: 256 random bits, shown to it once."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who may act for a runner: its owner, and the SHA-256 of its secret if it has one.
    Neither ever changes, so an instance may remember them."""

    owner: str
    secret_sha256: str | None

    @classmethod
    def of(cls, runner: RunnerRow) -> Ownership:
        return cls(runner.owner, runner.secret_sha256)

    def check(self, owner: str, secret: str | None) -> None:
        """Refuse (403) ``owner`` acting for the runner, or a secret that is not its own."""
        if not hmac.compare_digest(self.owner.encode(), owner.encode()):
            raise NotYourRunner(
                details="a runner acts only with the key that registered it; register anew"
            )
        if self.secret_sha256 is not None and (
            secret is None
            or not hmac.compare_digest(hash_secret(secret).encode(), self.secret_sha256.encode())
        ):
            raise WrongRunnerSecret(
                details="this runner registered with a secret of its own: "
                "send it (X-Runner-Secret, or runner_secret in the hello)"
            )


class RunnerOwners:
    """Checks that a request for a runner comes from its owner (one read per runner)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, Ownership] = {}  # runner id -> who may act for it

    async def check(self, runner_id: str, owner: str, secret: str | None) -> None:
        """Refuse (403) a request for another key's runner, or without its secret. An
        unknown runner passes: its route answers as before (404: register first)."""
        known = self._known.get(runner_id)
        if known is None:
            runner = await self.store.get_runner(runner_id) if _UUID.fullmatch(runner_id) else None
            if runner is None:
                return
            known = self.remember(runner)
        known.check(owner, secret)

    def remember(self, runner: RunnerRow) -> Ownership:
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        known = self._known[runner.id] = Ownership.of(runner)
        return known
