"""The app's lifecycle: one cleanup context per resource, each closing what it opened."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from runpack import app as app_module
from runpack.app import create_app
from runpack.settings import Settings
from runpack.store import open_store
from runpack.validation import ResultValidator


class Broken(Exception):
    pass


async def test_a_resource_that_fails_to_start_closes_those_opened_before(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the LISTEN bridge fails to start; on SQLite (no bridge) the hub does.
    The store and the result validator, opened before, are closed all the same."""
    postgres = settings.db.startswith("postgresql://")
    failing = app_module.PgBridge if postgres else app_module.Hub

    async def fail(*_args: Any) -> None:
        raise Broken("cannot start")

    monkeypatch.setattr(failing, "start", fail)
    closed: list[str] = []
    store = open_store(settings.db)
    close_store = store.close

    async def store_closed() -> None:
        closed.append("store")
        await close_store()

    monkeypatch.setattr(store, "close", store_closed)
    close_validator = ResultValidator.close

    async def validator_closed(self: ResultValidator) -> None:
        closed.append("validator")
        await close_validator(self)

    monkeypatch.setattr(ResultValidator, "close", validator_closed)

    runner = web.AppRunner(create_app(settings, store=store))
    with pytest.raises(Broken):
        await runner.setup()
    await runner.cleanup()
    assert closed == ["validator", "store"]
