"""Reading ``RUNPACK_*`` variables into a settings dataclass.

The server's :class:`runpack.settings.Settings` and the runner's
:class:`runpack_runner.settings.RunnerSettings` are both frozen dataclasses whose
fields are settings; this is how either is filled from the environment and flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
#: One setting as :func:`describe_fields` gives it.
Spec = dict[str, Any]


def env_name(name: str) -> str:
    """The variable of a setting: ``heartbeat_timeout`` → ``RUNPACK_HEARTBEAT_TIMEOUT``."""
    return "RUNPACK_" + name.upper()


def type_name(f: dataclasses.Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def split_list(raw: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    """A setting's value from its text, by the field's type; ValueError names the variable."""
    kind = type_name(f)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in TRUE:
                return True
            if lowered in FALSE:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{env_name(f.name)}: cannot read {raw!r} as {kind}") from None
    if kind.startswith("tuple"):
        return split_list(raw)
    return raw


def read_values(
    cls: type[Any], environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Field values from ``RUNPACK_*`` variables (empty ones ignored), then ``overrides``
    that are not None (the command line's flags)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = environ.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = parse_value(f, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def describe_fields(cls: type[Any], flag: Callable[[dataclasses.Field[Any]], str]) -> list[Spec]:
    """Name, variable, flag, type, default and help of every setting of ``cls``."""
    return [
        {
            "name": f.name,
            "env": env_name(f.name),
            "flag": flag(f),
            "type": type_name(f),
            "default": f.default,
            "help": f.metadata["help"],
            "secret": f.metadata["secret"],
        }
        for f in dataclasses.fields(cls)
    ]


def shown_default(spec: Spec) -> str:
    """A setting's default as a person writes it: ``true``, ``a,b``, or ``unset``."""
    default = spec["default"]
    if default in ("", ()):
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def flag_help(spec: Spec) -> str:
    """A flag's ``--help`` text: what it does, its default and its variable."""
    if "(default:" in spec["help"]:  # the help says it in words
        text = f"{spec['help']} ({spec['env']})"
    else:
        text = f"{spec['help']} (default: {shown_default(spec)}; {spec['env']})"
    return text.replace("%", "%%")  # argparse formats help with %


def settings_table(specs: list[Spec], secret: Callable[[Spec], str]) -> str:
    """Variable, flag, default and meaning of each setting, as docs/settings.md shows
    them; ``secret(spec)`` says what a secret's default is."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for spec in specs:
        flag = "—" if spec["secret"] else f"`{spec['flag']}`"
        if spec["secret"]:
            shown = secret(spec)
        else:
            text = shown_default(spec)
            shown = text if text == "unset" else f"`{text}`"
        rows.append(f"| `{spec['env']}` | {flag} | {shown} | {spec['help']} |")
    return "\n".join(rows)


#: Variables earlier versions read, and what took their place.
REPLACED = {
    "RUNPACK_RATE_SUBMIT": "RUNPACK_RATE_NEW_JOBS (new jobs) and RUNPACK_RATE_REQUESTS",
    "RUNPACK_RATE_POLL": "RUNPACK_RATE_REQUESTS",
}
#: Read by the command-line client, not by a settings class.
CLIENT_VARIABLES = frozenset({"RUNPACK_URL"})


def unknown_variables(environ: Mapping[str, str], *classes: type[Any]) -> list[str]:
    """A line for each ``RUNPACK_*`` variable that no settings class here reads: a
    name that changed says what replaced it, any other may be a typo."""
    known = {env_name(f.name) for cls in classes for f in dataclasses.fields(cls)}
    lines = []
    for name in sorted(environ):
        if not name.startswith("RUNPACK_") or name in known or name in CLIENT_VARIABLES:
            continue
        if name in REPLACED:
            lines.append(f"{name} is no longer read: use {REPLACED[name]}")
        else:
            lines.append(f"{name} is not a setting (see `runpack settings`); it is ignored")
    return lines
