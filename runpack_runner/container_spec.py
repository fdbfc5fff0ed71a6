"""What a ``container`` job asks for, and what this runner lets it have.

Parameters (docs/containers.md)::

    {"image": "sha256:<64 hex>" | "name@sha256:<64 hex>",
     "command": ["sh", "-c", "…"],                 # optional: the image's own command
     "env": {"NAME": "value"},                     # optional
     "inputs": {"data/a.csv": "https://…"},        # optional: files under /inputs
     "limits": {"cpus": 0.5, "memory_mb": 128, "pids": 64, "time_limit": 30, "gpus": 1}}

The image is named by digest, never by tag: the parameters are the job's cache key,
so a result is tied to the exact image that computed it (a tag can move; the server
cannot see any runner's Docker to resolve one). Limits default to the runner's
maxima (:class:`ContainerPolicy`); a job may ask for less, never more. Inputs are
checked in :mod:`runpack_runner.container_inputs`. No Docker here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runpack_runner.container_inputs import Input, parse_inputs

#: A content digest as Docker writes it.
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: ``name@sha256:…`` (a registry, port and path are part of the name).
PINNED = re.compile(r"(?P<name>[a-z0-9][a-z0-9._/:-]*)@(?P<digest>sha256:[0-9a-f]{64})")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Set by the runner; a job cannot set them.
RESERVED_ENV = frozenset(
    {"JOB_ID", "JOB_ATTEMPT", "OUTPUTS_DIR", "JOB_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "PATH"}
)
MAX_ARGS = 256
MAX_ENV = 128
MAX_TEXT = 64 * 1024
KNOWN = frozenset({"image", "command", "env", "inputs", "limits"})
LIMITS = ("cpus", "memory_mb", "pids", "time_limit", "gpus")
#: Limits that are whole numbers.
WHOLE = frozenset({"memory_mb", "pids", "gpus"})
HOW_TO_PIN = (
    "name the image by digest: sha256:<id> (docker image inspect --format '{{.Id}}' NAME:TAG) "
    "or name@sha256:<digest>; a tag can move, and the image is part of the job's cache key"
)


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: float
    memory_mb: int
    pids: int
    time_limit: float
    #: GPUs: the runner's maximum is how many it has; a job gets none unless it asks.
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """A container job's parameters, checked."""

    image: str
    #: The digest in ``image`` (an image ID, or a repository digest after ``@``).
    digest: str
    #: The repository named before ``@``, or "" for a bare image ID.
    name: str
    command: tuple[str, ...] | None
    env: dict[str, str]
    #: What the job asked for (None: the runner's maximum).
    asked: dict[str, float]
    #: Files to place under /inputs.
    inputs: tuple[Input, ...] = ()


def is_tag(entry: str) -> bool:
    """Whether an allow list entry is a tag (``name:tag``), not a digest or a pattern."""
    return (
        "@" not in entry and not any(c in entry for c in "*?[") and not entry.startswith("sha256:")
    )


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if "\0" in value or len(value) > MAX_TEXT:
        raise ValueError(f"{what} must be text of at most {MAX_TEXT} characters, without NUL")
    return value


def parse_image(image: Any) -> tuple[str, str]:
    """(name, digest) of a pinned reference; ValueError says how to pin one."""
    image = _text(image, "Parameter 'image'")
    if DIGEST.fullmatch(image):
        return "", image
    pinned = PINNED.fullmatch(image)
    if pinned is None:
        raise ValueError(f"Parameter 'image' is not pinned ({image!r}): {HOW_TO_PIN}")
    return pinned["name"], pinned["digest"]


def parse_spec(params: dict[str, Any]) -> ContainerSpec:
    """The job's parameters, checked; ValueError names the bad one."""
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise ValueError(
            f"Unknown parameters: {', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})"
        )
    if "image" not in params:
        raise ValueError("Missing required parameter: 'image'")
    name, digest = parse_image(params["image"])
    command = params.get("command")
    if command is not None:
        if isinstance(command, str):
            raise ValueError("Parameter 'command' must be a list of strings, e.g. ['sh', '-c', …]")
        if not isinstance(command, list) or not 1 <= len(command) <= MAX_ARGS:
            raise ValueError(f"Parameter 'command' must be a list of 1 to {MAX_ARGS} strings")
        command = tuple(_text(arg, "Each 'command' argument") for arg in command)
    env = params.get("env", {})
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise ValueError(f"Parameter 'env' must be an object of at most {MAX_ENV} strings")
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"Parameter 'env': {key!r} is not a variable name")
        if key in RESERVED_ENV:
            raise ValueError(f"Parameter 'env': {key} is set by the runner")
        _text(value, f"Parameter 'env': {key}")
    return ContainerSpec(
        params["image"],
        digest,
        name,
        command,
        dict(env),
        _asked(params.get("limits", {})),
        parse_inputs(params.get("inputs", {})),
    )


def _asked(limits: Any) -> dict[str, float]:
    if not isinstance(limits, dict):
        raise ValueError("Parameter 'limits' must be an object")
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ValueError(f"Parameter 'limits': unknown {', '.join(unknown)} ({', '.join(LIMITS)})")
    asked: dict[str, float] = {}
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"Parameter 'limits': {key} must be a number more than 0")
        if key in WHOLE and value != int(value):
            raise ValueError(f"Parameter 'limits': {key} must be a whole number")
        asked[key] = value
    return asked


@dataclass(frozen=True, slots=True)
class ContainerPolicy:
    """The runner's rules: the images it runs and the most a container may use."""

    allowed: tuple[str, ...] = ()
    most: Limits = Limits(cpus=1.0, memory_mb=512, pids=256, time_limit=3600.0)
    #: Patterns of the images that get a shared /job-cache.
    job_cache: tuple[str, ...] = ()

    def job_cache_folder(self, spec: ContainerSpec) -> str | None:
        """The name of the /job-cache folder of this image (one per repository, or per
        image ID when it has none), or None when the image has none."""
        if not any(fnmatch.fnmatchcase(spec.image, entry) for entry in self.job_cache):
            return None
        return re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name or spec.digest)

    def limits(self, spec: ContainerSpec) -> Limits:
        """The job's limits: what it asked for, or the maximum; ValueError if more."""
        values: dict[str, Any] = {}
        for key in LIMITS:
            most = getattr(self.most, key)
            asked = spec.asked.get(key)
            if asked is not None and asked > most:
                raise ValueError(
                    f"Parameter 'limits': {key} {asked:g} is more than this runner allows "
                    f"({most:g})"
                )
            values[key] = most if asked is None else asked
        if "gpus" not in spec.asked:
            values["gpus"] = 0
        for key in WHOLE:
            values[key] = int(values[key])
        return Limits(**values)

    def allows(self, spec: ContainerSpec, tag_digests: Callable[[str], Iterable[str]]) -> bool:
        """Whether an entry of the allow list names this image.

        An entry is a pinned reference or a pattern (``*``, ``?``) matched against the
        job's ``image``; or a ``name:tag``, which allows the digests that the tag has
        on this runner (``tag_digests(entry)``: its image ID and repository digests).
        """
        for entry in self.allowed:
            if fnmatch.fnmatchcase(spec.image, entry):
                return True
        for entry in self.allowed:
            if is_tag(entry):
                digests = set(tag_digests(entry))
                if spec.digest in digests or spec.image in digests:
                    return True
        return False

    def advertised(self, tag_digests: Callable[[str], Iterable[str]]) -> list[str] | None:
        """The allow list as the runner sends it when it registers (None: it has none):
        each entry as it is, and after a tag the patterns of what it allows now (its
        image ID, by itself or after any name, and its repository digests), so that the
        server gives it the jobs :meth:`allows` lets through, and only those."""
        if not self.allowed:
            return None
        out: list[str] = []
        for entry in self.allowed:
            out.append(entry)
            if not is_tag(entry):
                continue
            for digest in tag_digests(entry):
                out += [digest, f"*@{digest}"] if DIGEST.fullmatch(digest) else [digest]
        return list(dict.fromkeys(out))

    def refusal(self, spec: ContainerSpec) -> str:
        if not self.allowed:
            return (
                f"image {spec.image} is not allowed: this runner allows no images "
                "(RUNPACK_CONTAINER_IMAGES is empty)"
            )
        return f"image {spec.image} is not allowed on this runner (RUNPACK_CONTAINER_IMAGES)"
