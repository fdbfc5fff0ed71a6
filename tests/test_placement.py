"""New jobs placed on free runner slots as they are inserted (runpack.placement):
a job submitted while a connected runner has a free slot, and no queued job waits
for it, is inserted already claimed for that runner and pushed, with no claim."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from runpack.appkeys import HUB
from runpack.hub import Hub
from runpack.store import JobRow
from tests.conftest import RUNNER, service_of, submit
from tests.procs import until


def hub_of(client: TestClient) -> Hub:
    assert client.app is not None
    return client.app[HUB]


#: The secret each runner got when it registered, to come back with.
SECRETS: dict[str, str] = {}


async def runner(
    client: TestClient, concurrency: int, slots: int, runner_id: str | None = None
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A runner on the socket that granted ``slots``, once the hub is done with them
    (queued jobs it could run are then pushed to it); ``runner_id`` to come back."""
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    hello = {"type": "hello", "name": "r", "capabilities": ["hello_world"]}
    if runner_id is not None:
        hello["runner_id"] = runner_id
        hello["runner_secret"] = SECRETS[runner_id]
    await ws.send_json({**hello, "concurrency": concurrency})
    welcome = await ws.receive_json(timeout=5)
    runner_id = welcome["runner_id"]
    SECRETS.setdefault(runner_id, welcome.get("runner_secret"))
    await ws.send_json({"type": "ready", "slots": slots})
    hub = hub_of(client)

    def granted() -> bool:
        live = hub.snapshot().get(runner_id)
        return live is not None and live["free_slots"] + len(live["current_jobs"]) == slots

    await until(granted, "the runner's slots")
    async with asyncio.timeout(10):
        await hub.settled()  # the round the slots woke found nothing queued
    return ws, runner_id


def count_claims(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Runner ids of the hub's claims from now on."""
    service = service_of(client)
    claim_batch = service.claim_batch
    claims: list[str] = []

    async def counted(runner_id: str, job_types: Sequence[str], limit: int) -> list[JobRow]:
        claims.append(runner_id)
        return await claim_batch(runner_id, job_types, limit)

    monkeypatch.setattr(service, "claim_batch", counted)
    return claims


async def job_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json(timeout=10)
    assert frame["type"] == "job", frame
    return frame


async def test_a_job_submitted_to_a_free_slot_is_inserted_claimed_and_pushed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, runner_id = await runner(client, concurrency=1, slots=1)
    claims = count_claims(client, monkeypatch)
    answer = await submit(client, name="placed")
    # As the original answers a new job (201):
    assert (answer["status"], answer["message"]) == ("pending", "Job queued successfully")
    frame = await job_frame(ws)
    assert frame["job_id"] == answer["job_id"] and frame["attempt"] == 1
    assert claims == []  # no claim statement: the insert claimed it
    row = await service_of(client).get_job(answer["job_id"])
    assert (row.status, row.claimed_by, row.attempts) == ("claimed", runner_id, 1)
    assert row.claimed_at == row.created_at == row.last_heartbeat
    snapshot = hub_of(client).snapshot()[runner_id]
    assert (snapshot["free_slots"], snapshot["current_jobs"]) == (0, [answer["job_id"]])
    await ws.close()


async def test_jobs_submitted_together_take_only_the_free_slots(client: TestClient) -> None:
    """Three submits at once for one free slot: one job is placed, two are queued,
    and each starts as the runner frees its slot."""
    ws, _ = await runner(client, concurrency=1, slots=1)
    answers = await asyncio.gather(*(submit(client, name=f"together-{i}") for i in range(3)))
    ids = {a["job_id"] for a in answers}
    service = service_of(client)
    started = []
    for _ in range(3):
        frame = await job_frame(ws)
        started.append(frame["job_id"])
        rows = [await service.get_job(job_id) for job_id in ids]
        assert sum(r.status == "claimed" for r in rows) == 1  # never more than the slot
        await ws.send_json({"type": "complete", "job_id": frame["job_id"], "output_data": {}})
        ack = await ws.receive_json(timeout=10)
        assert (ack["type"], ack["applied"]) == ("ack", True), ack
        await ws.send_json({"type": "ready", "slots": 1})
    assert set(started) == ids
    assert {(await service.get_job(i)).status for i in ids} == {"completed"}
    await ws.close()


async def test_a_submit_of_a_known_job_gives_the_slot_back(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit whose hash has a job already takes no slot: the next new job gets it."""
    queued = await submit(client, name="known")  # before any runner: queued
    ws, runner_id = await runner(client, concurrency=2, slots=2)
    first = await job_frame(ws)  # the queued job took one of the slots
    assert first["job_id"] == queued["job_id"]
    assert hub_of(client).snapshot()[runner_id]["free_slots"] == 1
    claims = count_claims(client, monkeypatch)
    again = await submit(client, name="known")
    assert again["job_id"] == queued["job_id"] and again["status"] == "claimed"
    assert hub_of(client).snapshot()[runner_id]["free_slots"] == 1  # given back
    new = await submit(client, name="new")
    frame = await job_frame(ws)
    assert frame["job_id"] == new["job_id"] and claims == []
    await ws.close()


async def test_a_runner_back_on_a_new_socket_gets_the_job_there(client: TestClient) -> None:
    """The old socket's free slots are not free any more once the runner is back on
    another one: a job submitted before the new socket grants a slot waits for it."""
    old, runner_id = await runner(client, concurrency=1, slots=1)
    new = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    hello = {"type": "hello", "name": "r", "capabilities": ["hello_world"], "concurrency": 1}
    await new.send_json({**hello, "runner_id": runner_id, "runner_secret": SECRETS[runner_id]})
    assert (await new.receive_json(timeout=5))["runner_id"] == runner_id
    answer = await submit(client, name="after the reconnect")
    row = await service_of(client).get_job(answer["job_id"])
    assert row.status == "pending"  # not placed on the old socket's slot
    await new.send_json({"type": "ready", "slots": 1})
    frame = await job_frame(new)
    assert frame["job_id"] == answer["job_id"] and frame["attempt"] == 1
    await new.close()
    await old.close()


class Runner:
    """A runner on the socket that runs every job it is pushed (its output names its
    input) and checks, at each push, that it never holds more than its slots."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, runner_id: str, slots: int) -> None:
        self.ws, self.runner_id, self.slots = ws, runner_id, slots
        self.running: set[str] = set()
        self.most = 0
        self.ran: list[str] = []
        self.acked = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            frame = msg.json()
            self.acked += frame["type"] == "ack" and frame["applied"]
            if frame["type"] != "job":
                continue
            job_id = frame["job_id"]
            self.running.add(job_id)
            self.most = max(self.most, len(self.running))
            assert len(self.running) <= self.slots, (self.runner_id, self.running)
            self.ran.append(job_id)
            await asyncio.sleep(0.001)
            output = {"echo": frame["input_params"]["i"]}
            self.running.discard(job_id)
            await self.ws.send_json({"type": "complete", "job_id": job_id, "output_data": output})
            await self.ws.send_json({"type": "ready", "slots": 1})  # free_on_result

    async def close(self) -> None:
        await self.ws.close()
        await self.task


#: Each speed device of the hub switched off in turn (all on: the defaults).
DEVICES_OFF = {
    "all-on": {},
    "no-placement": {"place_new_jobs": False},
    "no-full-waves": {"full_waves": False},
    "a-write-each": {"write_frames_together": False},
}


@pytest.mark.parametrize("changes", DEVICES_OFF.values(), ids=DEVICES_OFF.keys())
async def test_speed_devices_on_or_off_run_the_same_jobs_to_the_same_results(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, changes: dict[str, bool]
) -> None:
    """A switch (RUNPACK_PLACE_NEW_JOBS, RUNPACK_FULL_WAVES,
    RUNPACK_WRITE_FRAMES_TOGETHER) changes how jobs reach runners, not what runs: the
    same jobs complete with the same outputs, each once, and no runner ever holds more
    jobs than its slots. Without placement, every job is claimed."""
    client = await make_client(**changes)
    place = changes.get("place_new_jobs", True)
    claimed = count_claimed_jobs(client, monkeypatch)
    runners = []
    for slots in (2, 3):
        ws, runner_id = await runner(client, concurrency=slots, slots=slots)
        runners.append(Runner(ws, runner_id, slots))
    ids: dict[int, str] = {}
    for i in range(10):  # one at a time: each finds an idle runner
        job_id = ids[i] = (await submit(client, i=i))["job_id"]
        await until(lambda: any(job_id in r.ran for r in runners), "the job's run")  # noqa: B023
    answers = await asyncio.gather(*(submit(client, i=i) for i in range(10, 60)))
    ids.update((10 + n, answer["job_id"]) for n, answer in enumerate(answers))
    again = await asyncio.gather(*(submit(client, i=i) for i in range(0, 60, 7)))
    assert {a["job_id"] for a in again} <= set(ids.values())  # known jobs: none new

    await until(lambda: sum(r.acked for r in runners) == len(ids), "every result stored")
    service = service_of(client)
    outputs = {i: (await service.get_job(job_id)).output_data for i, job_id in ids.items()}
    assert outputs == {i: f'{{"echo":{i}}}' for i in range(60)}
    ran = [job_id for r in runners for job_id in r.ran]
    assert sorted(ran) == sorted(ids.values())  # each job ran once
    assert all(r.most <= r.slots for r in runners)
    if place:
        assert len(claimed) < len(ids)  # the one-at-a-time submits were placed
    else:
        assert sorted(claimed) == sorted(ids.values())
    for r in runners:
        await r.close()


def count_claimed_jobs(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the jobs the hub claims from now on."""
    service = service_of(client)
    claim_batch = service.claim_batch
    jobs: list[str] = []

    async def counted(runner_id: str, job_types: Sequence[str], limit: int) -> list[JobRow]:
        claimed = await claim_batch(runner_id, job_types, limit)
        jobs.extend(job.id for job in claimed)
        return claimed

    monkeypatch.setattr(service, "claim_batch", counted)
    return jobs
