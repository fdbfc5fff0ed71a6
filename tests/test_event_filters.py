"""The shortcuts on the server's per-job path change nothing but the work: listeners
subscribed to some kinds of event get all of those, in order; the warning about job
types no runner handles follows runners that come and go; a result is checked for
figures whenever it may name one; a caller no bucket applies to is not counted."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
import pytest
from aiohttp.test_utils import TestClient

from runpack.appkeys import CALLER, HUB, LIMITS, PRESENCE
from runpack.artifacts import figpack_urls, may_name_figures
from runpack.auth import Caller, StoredKey
from runpack.hashing import js_stringify
from runpack.notify import EventKind, Notifier, ServerEvent
from runpack.protocol import Role
from runpack.standing import WARNING_EVENTS
from runpack.validation import ResultValidator
from tests.conftest import RUNNER_KEY, bearer, submit
from tests.procs import until


def every_kind() -> list[ServerEvent]:
    events = [ServerEvent(kind, f"job-{kind.value}") for kind in EventKind]
    return events + events[::-1]


def test_a_listener_gets_every_event_of_its_kinds_in_order_and_no_other() -> None:
    notifier = Notifier()
    seen: dict[str, list[ServerEvent]] = {"all": [], "attached": [], "jobs": [], "late": []}
    notifier.subscribe(seen["all"].append)
    notifier.subscribe(seen["attached"].append, [EventKind.RUNNER_ATTACHED])
    leave = notifier.subscribe(seen["jobs"].append, WARNING_EVENTS)
    events = every_kind()
    for event in events:
        notifier.publish(event)
    assert seen["all"] == events
    assert seen["attached"] == [e for e in events if e.type == EventKind.RUNNER_ATTACHED]
    assert seen["jobs"] == [e for e in events if e.type in WARNING_EVENTS]
    assert len(seen["jobs"]) == 4
    # An event typed by its kind's name as a string reaches the same listeners; one of a
    # kind the server does not have reaches those that take every kind.
    by_name = ServerEvent("runner_attached", "x")  # type: ignore[arg-type]
    unknown = ServerEvent("no_such_kind", "y")  # type: ignore[arg-type]
    leave()
    notifier.subscribe(seen["late"].append, [EventKind.RUNNER_ATTACHED])
    notifier.publish(by_name)
    notifier.publish(unknown)
    assert seen["all"][-2:] == [by_name, unknown]
    assert seen["attached"][-1] is by_name and seen["late"] == [by_name]
    assert len(seen["jobs"]) == 4  # left: told nothing more
    with pytest.raises(ValueError):
        leave()


def test_a_failing_listener_does_not_keep_the_event_from_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier()
    got: list[ServerEvent] = []

    def broken(event: ServerEvent) -> None:
        raise RuntimeError("broken listener")

    notifier.subscribe(broken, [EventKind.JOB_QUEUED])
    notifier.subscribe(got.append, [EventKind.JOB_QUEUED])
    event = ServerEvent(EventKind.JOB_QUEUED, "j")
    with caplog.at_level(logging.ERROR, logger="runpack.notify"):
        notifier.publish(event)
    assert got == [event]
    assert "failed on job_queued" in caplog.text


async def test_presence_is_woken_by_runners_attaching_only(client: TestClient) -> None:
    presence = client.app[PRESENCE]
    notifier = client.app[HUB].service.notifier
    for event in every_kind():
        presence._wake.clear()
        notifier.publish(event)
        assert presence._wake.is_set() == (event.type == EventKind.RUNNER_ATTACHED)


async def test_the_warning_follows_runners_that_come_and_go(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runpack.standing")

    def warnings() -> int:
        return sum("jobs of type rare_type are queued" in r.message for r in caplog.records)

    hub = client.app[HUB]
    await submit(client, "rare_type", n=1)
    await until(lambda: warnings() == 1, "the warning")
    await submit(client, "rare_type", n=2)  # once per type
    ws = await client.ws_connect("/api/runner/ws", headers=bearer(RUNNER_KEY))
    hello = {"type": "hello", "name": "w", "capabilities": ["rare_type"], "concurrency": 1}
    await ws.send_str(orjson.dumps(hello).decode())
    assert (await ws.receive_json())["type"] == "welcome"
    assert hub.handles("rare_type") and not hub.handles("other_type")
    await submit(client, "rare_type", n=3)  # a runner handles it: no warning
    await ws.close()
    await until(lambda: not hub.conns, "the runner gone")
    assert not hub.handles("rare_type")
    await submit(client, "rare_type", n=4)  # its attaching cleared the warning: again
    await until(lambda: warnings() == 2, "the warning again")


OUTPUTS: list[Any] = [
    {},
    {"message": "Hello"},
    {"figpack_url": "http://x/figures/a/b/index.html"},
    {"a": [{"b": {"figpack_url": "u"}}, {"figpack_url": None}]},
    {"text": 'a value that says "figpack_url" is no key'},
    {"figpack_url_other": 1, "not_figpack_url": 2},
    {"figpack\u005furl": "spelled with an escape in the text below"},
    {"é": "non-ASCII, \u0001 a control character"},
    [1, 2, {"figpack_url": 3}],
]


@pytest.mark.parametrize("value", OUTPUTS)
def test_only_results_that_name_no_figure_are_spared_the_walk(value: Any) -> None:
    texts = [js_stringify(value), orjson.dumps(value).decode()]
    texts.append(texts[0].replace('"figpack_url"', '"figpack\\u005furl"'))
    for text in texts:
        names = list(figpack_urls(orjson.loads(text)))
        assert may_name_figures(text) or not names, text


async def test_a_cached_result_is_judged_as_before_with_or_without_figures() -> None:
    validator = ResultValidator(timeout=1, cache_ttl=0)  # never started: no request made
    assert await validator.is_valid('{"message": "Hello"}')
    assert await validator.is_valid("")
    assert not await validator.is_valid("not JSON at all")  # unreadable: run again
    assert not await validator.is_valid('{"figpack_url": "http://127.0.0.1/x"}')
    assert not await validator.is_valid('{"figpack\\u005furl": "http://127.0.0.1/x"}')


class FakeRequest(dict[Any, Any]):
    """What the limits read of a request: its caller, address and headers."""

    remote = "192.0.2.1"
    headers: ClassVar[dict[str, str]] = {}


def caller(rate: int | None = None, role: Role = Role.SUBMIT) -> FakeRequest:
    key = None
    if rate is not None:
        key = StoredKey("k1", role, None, None, rate=rate, revoked=False)
    return FakeRequest({CALLER: Caller(role=role, key=key)})


async def test_callers_no_bucket_applies_to_get_no_budget_and_the_others_do(
    make_client: Any,
) -> None:
    def spends(limits: Any, request: FakeRequest) -> list[str] | None:
        budget = limits.work_budget(request)
        return None if budget is None else [key for key, _ in budget.spends]

    off = (await make_client()).app[LIMITS]  # the server's limits are off
    assert spends(off, caller()) is None
    assert spends(off, caller(rate=0)) is None
    assert spends(off, caller(rate=5)) == ["key:k1"]  # a key with a rate of its own
    on = (await make_client(rate_new_jobs=10, rate_key_new_jobs=100)).app[LIMITS]
    assert spends(on, caller()) == ["new_jobs:192.0.2.1", "key:env-submit"]
    assert spends(on, caller(rate=5)) == ["new_jobs:192.0.2.1", "key:k1"]
    assert spends(on, caller(rate=0)) is None
    assert spends(on, caller(role=Role.ADMIN)) is None
