"""Named statements, final for each engine when :mod:`runpack.store.queries` is imported.

A statement is written once, with ``:name`` parameters and a ``{slot}`` for each
word the two engines spell differently (:data:`SQLITE` and :data:`POSTGRES`).
:class:`Statement` fills the slots once per engine; for PostgreSQL it also turns
``:name`` into ``$n`` and keeps the names in order, so a call only looks its
arguments up. Where the engines need a statement of a different shape, it is given
as twins (``sqlite=…, postgres=…``); a statement only one engine runs names that
engine alone.

``{one_of[name]}`` is the test "is one of the values of the list parameter
``name``", one statement text for any number of values; ``{filter_one_of[name]}`` is
the same test on rows found by their primary key, spelled so that no index on the
tested column is taken instead. SQLite gets the list as JSON text (the store
encodes the parameters named in :attr:`Statement.arrays`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PARAM = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


#: The slots that take a list parameter's name: ``{one_of[name]}``.
LIST_SLOTS = ("one_of", "filter_one_of")


class _ListSlot:
    """A list slot for one engine; notes the parameters it is given in ``names``."""

    def __init__(self, form: str, names: list[str]) -> None:
        self._form = form
        self._names = names

    def __getitem__(self, name: str) -> str:
        self._names.append(name)
        return self._form.format(name=name)


#: SQLite's spelling of each slot.
SQLITE: Mapping[str, str] = {
    # Its planner would rather take an index on `status` and sort every pending job
    # than walk jobs_pending_idx and stop at the first.
    "pending_index": "INDEXED BY jobs_pending_idx",
    # A single writer: a chosen row cannot be taken meanwhile.
    "lock": "",
    "held_by_runner": "claimed_by = :runner_id",
    "one_of": "IN (SELECT value FROM json_each(:{name}))",
    "filter_one_of": "IN (SELECT value FROM json_each(:{name}))",
}

#: PostgreSQL's spelling of each slot.
POSTGRES: Mapping[str, str] = {
    "pending_index": "",
    # Concurrent claimers (and sweeps) step over each other's rows; a row changed
    # by another is checked again against the statement's conditions as it is locked.
    "lock": "FOR UPDATE SKIP LOCKED",
    # A statement on one job by id, with a runner check the planner cannot index.
    # Without statistics (a new table, or a database whose autovacuum is off) the
    # planner costs the primary key and jobs_claimed_by_idx the same for `id = :id AND
    # claimed_by = :runner_id` and may take the latter, which reads every job the
    # runner ever held. IS NOT DISTINCT FROM is the same test here (a runner id is
    # never NULL) and no index serves it, so the primary key is the only way in.
    "held_by_runner": "claimed_by IS NOT DISTINCT FROM :runner_id",
    # An array parameter. (An `IN (SELECT unnest(…))` can become a join that reads
    # and sorts every pending job instead of walking jobs_pending_idx.)
    "one_of": "= ANY(:{name})",
    # On a row found by its key: `status = ANY(…)` would let the planner take the
    # index of finished jobs by status, and read every job of that state, whenever
    # its statistics say there are few.
    "filter_one_of": "IN (SELECT unnest(:{name}::text[]))",
}


def _render(template: str, slots: Mapping[str, str]) -> tuple[str, list[str]]:
    """The template with ``slots`` filled in, and the list parameters it names."""
    names: list[str] = []
    lists = {slot: _ListSlot(slots[slot], names) for slot in LIST_SLOTS}
    text = template.format_map({**slots, **lists})
    return text.strip(), names


def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters as PostgreSQL's ``$n``, and the names in ``$n`` order."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PARAM.sub(number, sql), tuple(order)


class Statement:
    """One named statement: its SQLite text, its PostgreSQL text and argument order."""

    __slots__ = ("_postgres", "_sqlite", "arrays", "order")

    def __init__(
        self, shared: str | None = None, *, sqlite: str | None = None, postgres: str | None = None
    ) -> None:
        if shared is not None:
            sqlite = postgres = shared
        self._sqlite: str | None = None
        self._postgres: str | None = None
        #: The parameters ``$1``, ``$2``, … of the PostgreSQL text.
        self.order: tuple[str, ...] = ()
        #: The list parameters (``{one_of[…]}``…), which SQLite binds as JSON text.
        self.arrays: tuple[str, ...] = ()
        if sqlite is not None:
            self._sqlite, arrays = _render(sqlite, SQLITE)
            self.arrays = tuple(arrays)
        if postgres is not None:
            text, _ = _render(postgres, POSTGRES)
            self._postgres, self.order = numbered(text)

    @property
    def sqlite(self) -> str:
        if self._sqlite is None:
            raise TypeError(f"a PostgreSQL statement: {self._postgres}")
        return self._sqlite

    @property
    def postgres(self) -> str:
        if self._postgres is None:
            raise TypeError(f"a SQLite statement: {self._sqlite}")
        return self._postgres

    def __repr__(self) -> str:
        return f"Statement({self._sqlite or self._postgres!r})"
