"""The images a runner allows its container jobs to run, as the server places jobs by
them (docs/containers.md, "Which images run").

A runner that offers the ``container`` job type with an allow list sends the list's
entries in its registration (tags already resolved to digests on the runner). Its
job types are then an :class:`ImageGroup`: the same job types, plus the patterns, so
that runners of different lists claim as different groups (runpack.hub groups runners
by their job types) and each claim of such a group takes, of the container jobs, only
those whose ``image`` a pattern matches. A runner without a list claims as before.

A pattern means what the runner's own matcher (``fnmatch.fnmatchcase``) makes of it:
``*`` any text, ``?`` one character, ``[…]`` one of a set (``[!…]`` none of it), all
else itself. SQLite calls that matcher itself (:func:`image_allowed`, registered on
its connections, given the list as JSON text: one call per job looked at, its
patterns compiled once); PostgreSQL is given one regular expression that means the
same (:func:`pg_regex` of each pattern, tested against the matcher).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping

#: The job type whose jobs name an image (runpack_runner.jobs.container).
CONTAINER = "container"


class ImageGroup(frozenset[str]):
    """Job types claimed by a runner that allows only ``images`` (patterns) for the
    container type; equal only to a group of the same types and patterns."""

    images: tuple[str, ...]
    #: The patterns as JSON text (SQLite's claims) and as one regular expression
    #: (PostgreSQL's).
    listed: str
    pg_regex: str

    def __new__(cls, job_types: Iterable[str], images: Iterable[str]) -> ImageGroup:
        group = super().__new__(cls, job_types)
        group.images = tuple(images)
        group.listed, group.pg_regex = _forms(group.images)
        return group

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageGroup)
            and self.images == other.images
            and frozenset.__eq__(self, other)
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((frozenset.__hash__(self), self.images))

    def allows(self, image: object) -> bool:
        return image_allowed(image, self.listed)


@functools.lru_cache(maxsize=256)
def _forms(images: tuple[str, ...]) -> tuple[str, str]:
    regexes = [r for r in map(pg_regex, images) if r is not None]
    return json.dumps(images), "|".join(f"(?:{r})" for r in regexes) or NOTHING


def claimable(job_types: frozenset[str], images: Collection[str] | None) -> frozenset[str]:
    """``job_types`` as a runner that allows ``images`` (None: any) claims them."""
    if images is None or CONTAINER not in job_types:
        return job_types
    return ImageGroup(job_types, sorted(set(images)))


def images_of(job_types: Collection[str]) -> tuple[str, ...] | None:
    """The patterns a claim of these job types is limited to (None: none)."""
    return job_types.images if isinstance(job_types, ImageGroup) else None


def group_of(job_types: Collection[str]) -> ImageGroup | None:
    return job_types if isinstance(job_types, ImageGroup) else None


def group_key(job_types: frozenset[str]) -> tuple[str, ...]:
    """The key runpack.hub keeps one object per claim group by (no job type has a NUL)."""
    key = tuple(sorted(job_types))
    return key + tuple("\0" + p for p in job_types.images) if type(job_types) is ImageGroup else key


def refuses(job_types: Collection[str], job_type: str, params: object) -> bool:
    """Whether a runner that claims ``job_types`` may not run this job (its image is not
    on the runner's list); placement asks this of each free runner."""
    return (
        type(job_types) is ImageGroup
        and job_type == CONTAINER
        and not job_types.allows(params.get("image") if isinstance(params, Mapping) else None)
    )


def image_allowed(image: object, listed: object) -> bool:
    """SQLite's ``image_allowed(image, patterns)``: whether one of the patterns (a JSON
    array) matches ``image``, as the runner's matcher does."""
    if not isinstance(image, str) or not isinstance(listed, str):
        return False
    match = _matcher(listed)
    return match is not None and match(image) is not None


@functools.lru_cache(maxsize=256)
def _matcher(listed: str) -> Callable[[str], object] | None:
    """The patterns of a JSON array as one compiled expression (fnmatch's own
    translation, joined as its documentation allows); None if there are none."""
    patterns = [p for p in json.loads(listed) if isinstance(p, str)]
    if not patterns:
        return None
    try:
        return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match
    except re.error:  # as the runner, whose matcher fails on such a pattern
        return lambda image: any(_fnmatch(image, p) for p in patterns) or None


def _fnmatch(image: str, pattern: str) -> bool:
    try:
        return fnmatch.fnmatchcase(image, pattern)
    except re.error:
        return False


# --- PostgreSQL -------------------------------------------------------------------------
#: A regular expression that matches nothing (the end, then a character).
NOTHING = "$.^"


def pg_regex(pattern: str) -> str | None:
    """A PostgreSQL regular expression (to be matched with ``COLLATE "C"``) that matches
    exactly what ``fnmatch.fnmatchcase`` matches with ``pattern``; None if nothing.

    It reads the pattern as CPython's ``fnmatch.translate`` does, and writes every
    character other than an ASCII letter or digit as a ``\\uXXXX`` escape, so no
    character of the pattern is special to PostgreSQL.
    """
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(_char("["))
                continue
            body = _class(pattern, i, j)
            i = j + 1
            if body is None:
                return None
            out.append(body)
        else:
            out.append(_char(c))
    return "".join(out) + "$"


def _class(pattern: str, i: int, j: int) -> str | None:
    """``pattern[i:j]``, the inside of a ``[…]``, as a bracket expression (None: it
    matches no character): made into a Python class as fnmatch makes it, then read
    as Python's ``re`` reads that class."""
    stuff = pattern[i:j]
    if "-" not in stuff:
        stuff = stuff.replace("\\", "\\\\")
    else:
        chunks = []
        k = i + 2 if pattern[i] == "!" else i + 1
        while True:
            k = pattern.find("-", k, j)
            if k < 0:
                break
            chunks.append(pattern[i:k])
            i = k + 1
            k = k + 3
        chunk = pattern[i:j]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # empty ranges left out
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
        stuff = "-".join(s.replace("\\", "\\\\").replace("-", "\\-") for s in chunks)
    if not stuff:
        return None
    if stuff == "!":
        return "."
    negated = stuff[0] == "!"
    # Read as re does: "\\x" is x; "a-b" a range, unless a is a range's end ("a-b-c").
    chars: list[tuple[str, bool]] = []  # (character, escaped)
    k = 1 if negated else 0
    while k < len(stuff):
        if stuff[k] == "\\" and k + 1 < len(stuff):
            chars.append((stuff[k + 1], True))
            k += 2
        else:
            chars.append((stuff[k], False))
            k += 1
    items: list[str] = []
    k = 0
    while k < len(chars):
        c = chars[k][0]
        if k + 2 < len(chars) and chars[k + 1] == ("-", False):
            if c > chars[k + 2][0]:
                return None  # re refuses it: the runner's matcher fails on it too
            items.append(f"{_char(c)}-{_char(chars[k + 2][0])}")
            k += 3
        else:
            items.append(_char(c))
            k += 1
    return "[" + ("^" if negated else "") + "".join(items) + "]"


def _char(c: str) -> str:
    if c.isascii() and c.isalnum():
        return c
    code = ord(c)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
