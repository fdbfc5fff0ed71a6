"""Runners send their container image allow list; a container job goes only to a runner
whose list allows its image (docs/containers.md, "Which images run").

The server's matching is held against the runner's own matcher
(runpack_runner.container_spec.ContainerPolicy), on SQLite and PostgreSQL, with
patterns full of the characters SQL patterns treat specially; real ``runpack serve``
and ``runpack-runner`` processes with a real dockerd run the jobs.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import aiohttp
import pytest

from runpack.image_lists import ImageGroup, claimable, pg_regex, refuses
from runpack.protocol import Hello, ProtocolError, Registration
from runpack.store import Store
from runpack.store.base import NewJob
from runpack_runner.container_spec import ContainerPolicy, ContainerSpec
from tests.pg import require_postgres
from tests.procs import KEYS, NO_LIMITS, refused_registration, running_server
from tests.test_store import T0, store_fixture  # noqa: F401

HEX = "0123456789abcdef"
#: Characters that mean something to fnmatch, LIKE, GLOB or a regular expression.
SPECIAL = "*?[]!^-%_\\.$()|+{}"


def digest(n: int) -> str:
    return "sha256:" + (HEX[n % 16] * 64)


#: Images jobs name: valid references and strings that only a pattern's literal
#: special characters would match.
IMAGES = [
    digest(1),
    digest(2),
    f"lab/tool@{digest(1)}",
    f"lab/tool@{digest(3)}",
    f"lab/t%ol@{digest(1)}",
    f"lab/t_ol@{digest(1)}",
    f"lab/txol@{digest(1)}",
    f"lab/[ab]ool@{digest(1)}",
    f"lab/aool@{digest(1)}",
    f"lab/cool@{digest(1)}",
    f"ghcr.io/lab/x@{digest(2)}",
    f"LAB/TOOL@{digest(1)}",
    "lab/tool:1",
    "",
]
#: Allow list entries, each the runner's meaning of it held against the server's.
PATTERNS = [
    "lab/tool@*",
    "lab/t%ol@*",
    "lab/t_ol@*",
    "lab/t?ol@*",
    "lab/[ab]ool@*",
    "lab/[!a]ool@*",
    "lab/[%_]ool@*",
    "lab/[a-c]ool@*",
    "lab/[c-a]ool@*",
    "lab/[]ab]ool@*",
    "lab/[ab@*",
    "lab/\\[ab]ool@*",
    "*@" + digest(1),
    digest(2),
    "ghcr.io/*",
    "%",
    "_",
    "*",
    "lab/tool:1",
]


def runner_allows(entry: str, image: str) -> bool:
    """The runner's own decision (a tag entry resolves to nothing here)."""
    spec = ContainerSpec(image, image.rpartition("@")[2], image.rpartition("@")[0], None, {}, {})
    return ContainerPolicy(allowed=(entry,)).allows(spec, lambda tag: ())


def random_patterns(n: int) -> list[str]:
    rng = random.Random(18)
    alphabet = "ab/@:" + SPECIAL
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(n)]


# --- the matcher, against the runner's --------------------------------------------------------


def lists(n: int) -> list[list[str]]:
    """Allow lists: each pattern alone, then random lists of several."""
    singles = [[p] for p in PATTERNS + random_patterns(500)]
    rng = random.Random(7)
    many = random_patterns(600)
    return singles + [rng.sample(many, rng.randint(2, 6)) for _ in range(n)]


def test_the_servers_matcher_is_the_runners() -> None:
    for entries in lists(300):
        policy = ContainerPolicy(allowed=tuple(entries))
        group = claimable(frozenset({"container"}), policy.advertised(lambda tag: ()))
        for image in IMAGES:
            ours = not refuses(group, "container", {"image": image})
            theirs = any(runner_allows(entry, image) for entry in entries)
            assert ours == theirs, (entries, image)


async def test_postgres_regular_expressions_match_as_the_runner_does() -> None:
    import asyncpg

    from tests.pg import fresh_database

    require_postgres()
    patterns = PATTERNS + random_patterns(2000)
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            for entry in patterns:
                regex = pg_regex(entry)
                expected = [runner_allows(entry, image) for image in IMAGES]
                if regex is None:
                    assert not any(expected), entry
                    continue
                rows = await conn.fetch(
                    'SELECT i COLLATE "C" ~ $1 FROM unnest($2::text[]) WITH ORDINALITY AS t(i, n)'
                    " ORDER BY n",
                    regex,
                    IMAGES,
                )
                assert [r[0] for r in rows] == expected, (entry, regex)
            for entries in lists(300):  # a list as one expression, as claims use it
                group = claimable(frozenset({"container"}), entries)
                assert isinstance(group, ImageGroup)
                expected = [any(runner_allows(e, i) for e in entries) for i in IMAGES]
                rows = await conn.fetch(
                    'SELECT i COLLATE "C" ~ $1 FROM unnest($2::text[]) WITH ORDINALITY AS t(i, n)'
                    " ORDER BY n",
                    group.pg_regex,
                    IMAGES,
                )
                assert [r[0] for r in rows] == expected, (entries, group.pg_regex)
        finally:
            await conn.close()


def test_a_runner_sends_its_list_with_tags_resolved() -> None:
    policy = ContainerPolicy(allowed=("lab/tool:1", "lab/other@*", digest(4), "gone:2"))
    resolved = {"lab/tool:1": [digest(5), f"lab/tool@{digest(6)}"], "gone:2": []}
    sent = policy.advertised(lambda tag: resolved[tag])
    tool = ["lab/tool:1", digest(5), f"*@{digest(5)}", f"lab/tool@{digest(6)}"]
    assert sent == [*tool, "lab/other@*", digest(4), "gone:2"]
    assert ContainerPolicy().advertised(lambda tag: ()) is None  # no list: none sent
    for image in [*IMAGES, f"x/y@{digest(5)}", f"lab/tool@{digest(6)}"]:
        spec = ContainerSpec(
            image, image.rpartition("@")[2], image.rpartition("@")[0], None, {}, {}
        )
        ours = claimable(frozenset({"container"}), sent).allows(image)  # type: ignore[attr-defined]
        assert ours == policy.allows(spec, lambda tag: resolved[tag]), image


def test_groups_differ_by_their_lists() -> None:
    plain = frozenset({"container", "noop"})
    a, b = ImageGroup(plain, ["a@*"]), ImageGroup(plain, ["b@*"])
    assert a != b and a != plain and plain != a and len({a, b, plain}) == 3
    assert a == ImageGroup(plain, ["a@*"]) and hash(a) == hash(ImageGroup(plain, ["a@*"]))
    assert claimable(frozenset({"noop"}), ["a@*"]) == frozenset({"noop"})  # no container type
    assert claimable(plain, None) is plain


# --- registration -------------------------------------------------------------------------------


HOSTILE = [
    (["x@*"] * 257, "at most 256 patterns"),
    (["x" * 513], "each 1 to 512 printable characters"),
    (["lab/tool@*\x00"], "each 1 to 512 printable characters"),
    (["lab/\ntool"], "each 1 to 512 printable characters"),
    ([""], "each 1 to 512 printable characters"),
    ([3], "each 1 to 512 printable characters"),
    ("lab/*", "an array of image patterns"),
    ({"a": "b"}, "an array of image patterns"),
]


def test_hostile_lists_are_refused_by_the_protocol() -> None:
    for images, why in HOSTILE:
        body = {"name": "r", "capabilities": ["container"], "images": images}
        with pytest.raises(ProtocolError) as caught:
            Registration.read(body)
        assert caught.value.error == "Invalid registration data" and why in str(
            caught.value.details
        )
        with pytest.raises(ProtocolError):
            Hello.decode({"type": "hello", **body, "concurrency": 1})
    with pytest.raises(ProtocolError) as caught:
        Registration.read({"name": "r", "capabilities": ["noop"], "images": ["a"]})
    assert "only with the container job type" in str(caught.value.details)
    assert Registration.read({"name": "r", "capabilities": ["container"]}).images is None
    hello = Hello(None, "r", ["container"], 1, images=[])
    assert Hello.decode(hello.encode()).images == []  # an empty list allows nothing
    assert "images" not in Hello(None, "r", ["container"], 1).encode()


# --- claims, on both engines --------------------------------------------------------------------


async def add(store: Store, job_type: str, params: str, n: int) -> str:
    job = NewJob(
        id=str(uuid.uuid4()),
        job_hash=uuid.uuid4().hex,
        job_type=job_type,
        input_params=params,
        priority=0,
        max_attempts=3,
        timeout=None,
        now=T0 + n,
    )
    row, created = await store.insert_job(job)
    assert created
    return row.id


async def test_claims_take_only_the_images_a_runner_allows(store: Store) -> None:
    import orjson

    jobs = {
        await add(store, "container", orjson.dumps({"image": i}).decode(), n): i
        for n, i in enumerate(IMAGES)
    }
    odd = {  # parameters no runner's list matches
        await add(store, "container", '{"image": 5}', 90): "5",
        await add(store, "container", "{}", 91): None,
    }
    other = await add(store, "noop", '{"image": "nothing@*"}', 99)
    for entry in PATTERNS:
        group = claimable(frozenset({"container", "noop"}), [entry])
        claimed = await store.claim_batch("r", group, T0 + 1000, 100)
        ids = {j.id for j in claimed}
        expected = {jid for jid, image in jobs.items() if runner_allows(entry, image)}
        assert ids == expected | {other}, entry
        for job in claimed:  # back in the queue for the next pattern
            assert await store.requeue(job.id, ["claimed"], T0 + 1000, 0)
    # Several patterns at once; none.
    for entries in (PATTERNS[:8], PATTERNS, []):
        group = claimable(frozenset({"container"}), entries)
        claimed = await store.claim_batch("r", group, T0 + 1000, 100)
        expected = {
            jid for jid, image in jobs.items() if any(runner_allows(e, image) for e in entries)
        }
        assert {j.id for j in claimed} == expected, entries
        for job in claimed:
            assert await store.requeue(job.id, ["claimed"], T0 + 1000, 0)
    # A runner without a list takes them all, as before.
    everything = await store.claim_batch("r", frozenset({"container"}), T0 + 1000, 100)
    assert {j.id for j in everything} == set(jobs) | set(odd)


# --- a hostile runner, against a real server ----------------------------------------------------


async def test_hostile_lists_are_refused_at_registration_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    admin = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
    cases = [*HOSTILE, (["a@*"], "only with the container job type in capabilities")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with running_server(tmp_path / "server", {**KEYS, **NO_LIMITS}) as server:
            for images, why in cases:
                kinds = ["noop"] if "only with" in why else ["container"]
                body = {"name": "evil", "capabilities": kinds, "images": images}
                answer, frame = await refused_registration(http, server.url, body)
                assert why in answer["details"] and "\n" not in answer["details"], answer
                assert why in frame["details"], frame
            async with http.get(f"{server.url}/api/admin/runners", headers=admin) as r:
                assert (await r.json())["runners"] == []
