"""What the operator declares per job type: the parameters left out of its job hash.

Some parameters describe where a request came from rather than what to compute. They
are stored with the job and reach the handler (a figure's description shows them) but
are left out of the job hash: Neurosift sends the page URL it was on, which would
otherwise give every page its own copy of the same figure. The ``hash_ignored_params``
setting declares them, by default for the figure job types only (``figpack_nwb_*``:
``dandiset_id`` and ``neurosift_url``); every other job type hashes all of its
parameters, as the original did.

A job type may also have a *version* (the ``job_type_versions`` setting, or what its
runners' handlers declare: runpack.handler_versions): it enters the job hash, so that
a new version of a handler computes again instead of serving results that the old one
made. Job types without one hash as the original did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: The figure job types' metadata (docs/figures.md): the setting's default.
FIGURE_METADATA = "figpack_nwb_*=dandiset_id,neurosift_url"


@dataclass(frozen=True, slots=True)
class HashIgnored:
    """Parameters left out of the hash, by job type (``type``) or prefix (``prefix*``).
    The first rule whose pattern matches a job type applies."""

    rules: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> HashIgnored:
        """``PATTERN=NAME,NAME;PATTERN=NAME…``; ValueError names a rule that is not one."""
        rules = []
        for rule in filter(None, (part.strip() for part in text.split(";"))):
            pattern, equals, names = rule.partition("=")
            ignored = frozenset(filter(None, (name.strip() for name in names.split(","))))
            pattern = pattern.strip()
            if not equals or not pattern or not ignored or "*" in pattern[:-1]:
                raise ValueError(
                    f"hash_ignored_params: {rule!r} is not JOB_TYPE=NAME,NAME "
                    "(a job type, or a prefix ending in *)"
                )
            rules.append((pattern, ignored))
        return cls(tuple(rules))

    def ignored(self, job_type: str) -> frozenset[str]:
        for pattern, names in self.rules:
            if pattern.endswith("*"):
                if job_type.startswith(pattern[:-1]):
                    return names
            elif job_type == pattern:
                return names
        return frozenset()

    def hash_params(self, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters that identify a job: ``params`` less its type's ignored keys."""
        ignored = self.ignored(job_type)
        if not ignored:
            return params
        return {k: v for k, v in params.items() if k not in ignored}


@dataclass(frozen=True, slots=True)
class JobTypeVersions:
    """The version of each job type that has one, by type or prefix (``prefix*``);
    the first rule whose pattern matches applies."""

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> JobTypeVersions:
        """``PATTERN=VERSION;…``; ValueError names a rule that is not one."""
        rules = []
        for rule in filter(None, (part.strip() for part in text.split(";"))):
            pattern, equals, version = (part.strip() for part in rule.partition("="))
            if not equals or not pattern or not version or "*" in pattern[:-1]:
                raise ValueError(
                    f"job_type_versions: {rule!r} is not JOB_TYPE=VERSION "
                    "(a job type, or a prefix ending in *)"
                )
            rules.append((pattern, version))
        return cls(tuple(rules))

    def version(self, job_type: str) -> str | None:
        for pattern, version in self.rules:
            if pattern.endswith("*"):
                if job_type.startswith(pattern[:-1]):
                    return version
            elif job_type == pattern:
                return version
        return None


_DIGITS = "0123456789"
_PARTS = re.compile(r"[0-9]+|[^0-9]+")


def version_order(version: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """A version's place in natural order: its runs of digits compared as numbers,
    the text between them as text, a number before text where the two meet, and a
    version that begins another before it (1.9 < 1.10 < 2 < 2.0 < 2.0b < 10)."""
    parts = tuple(
        (0, int(part), "") if part[0] in "0123456789" else (1, 0, part)
        for part in _PARTS.findall(version)
    )
    return parts, version  # "01" and "1" are the same number: the text decides
