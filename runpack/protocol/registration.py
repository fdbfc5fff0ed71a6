"""What a runner may register as: the same rules over HTTP and in a hello, and the
body and answer of ``POST /api/runner/register``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runpack.protocol.constants import (
    MAX_CAPABILITIES,
    MAX_IMAGE_CHARS,
    MAX_IMAGES,
    MAX_NAME_CHARS,
    MAX_VERSION_CHARS,
)
from runpack.protocol.fields import ProtocolError, about


def check_registration(name: object, capabilities: object) -> tuple[str, list[str]]:
    """A runner's name and job types as registered over HTTP or said in a hello;
    ProtocolError (the original's message, the rule in the details) if they are not."""
    if not isinstance(name, str) or not name.strip():
        raise _bad_registration("name: a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise _bad_registration(f"name: at most {MAX_NAME_CHARS} characters")
    if not isinstance(capabilities, list):
        raise _bad_registration("capabilities: an array of job types")
    if len(capabilities) > MAX_CAPABILITIES:
        raise _bad_registration(f"capabilities: at most {MAX_CAPABILITIES} job types")
    types: list[str] = []
    for job_type in capabilities:
        if not isinstance(job_type, str) or not job_type or len(job_type) > MAX_NAME_CHARS:
            raise _bad_registration(f"capabilities: job types of 1 to {MAX_NAME_CHARS} characters")
        types.append(job_type)
    if "\0" in name + "".join(types):
        raise _bad_registration("name and capabilities: no NUL characters")
    return name, types


def check_versions(versions: object, capabilities: list[str]) -> dict[str, str]:
    """The handler versions a runner declares, ``{job_type: version}`` (absent or null:
    none), each of a job type among its ``capabilities``; ProtocolError if they are not.
    A version is 1 to MAX_VERSION_CHARS printable characters (docs/runners.md)."""
    if versions is None:
        return {}
    if not isinstance(versions, dict):
        raise _bad_registration("versions: an object of job type to version")
    if len(versions) > MAX_CAPABILITIES:
        raise _bad_registration(f"versions: at most {MAX_CAPABILITIES} job types")
    declared = set(capabilities)
    for job_type, version in versions.items():
        if job_type not in declared:
            raise _bad_registration("versions: only of job types in capabilities")
        if not _short_text(version, MAX_VERSION_CHARS):
            raise _bad_registration(f"versions: each 1 to {MAX_VERSION_CHARS} printable characters")
    return dict(versions)


def _short_text(value: object, max_chars: int) -> bool:
    """Is ``value`` a string of 1 to ``max_chars`` printable characters?"""
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def check_images(images: object, capabilities: list[str]) -> list[str] | None:
    """The image allow list a runner offering the ``container`` job type sends (absent
    or null: it sends none, and may be given any container job; docs/containers.md);
    ProtocolError if it is not a list of at most MAX_IMAGES patterns of 1 to
    MAX_IMAGE_CHARS printable characters."""
    if images is None:
        return None
    if not isinstance(images, list):
        raise _bad_registration("images: an array of image patterns")
    if len(images) > MAX_IMAGES:
        raise _bad_registration(f"images: at most {MAX_IMAGES} patterns")
    if "container" not in capabilities:
        raise _bad_registration("images: only with the container job type in capabilities")
    for image in images:
        if not _short_text(image, MAX_IMAGE_CHARS):
            raise _bad_registration(f"images: each 1 to {MAX_IMAGE_CHARS} printable characters")
    return list(images)


def _bad_registration(why: str) -> ProtocolError:
    return ProtocolError("Invalid registration data", why)


@dataclass(slots=True)
class Registration:
    """The body of ``POST /api/runner/register`` (a hello says the same over WebSocket)."""

    name: str = field(metadata=about(minLength=1, maxLength=MAX_NAME_CHARS, pattern=r"\S"))
    capabilities: list[str] = field(
        metadata=about(
            maxItems=MAX_CAPABILITIES,
            items={"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
        )
    )
    with_secret: bool = field(
        default=False,
        metadata=about("Ask for a secret of the runner's own (Runpack's runner does)."),
    )
    versions: dict[str, str] = field(
        default_factory=dict,
        metadata=about(
            "The version its handler declares, by job type (of those in `capabilities`):"
            " results are keyed by the job type's current version (docs/runners.md).",
            maxProperties=MAX_CAPABILITIES,
            additionalProperties={
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_VERSION_CHARS,
            },
        ),
    )

    images: list[str] | None = field(
        default=None,
        metadata=about(
            "With the `container` job type: the images it runs (its allow list, tags"
            " resolved to digests); it is given only the container jobs whose image one"
            " of them matches (docs/containers.md). Left out: any container job.",
            type="array",
            maxItems=MAX_IMAGES,
            items={"type": "string", "minLength": 1, "maxLength": MAX_IMAGE_CHARS},
        ),
    )

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "capabilities": self.capabilities,
            "with_secret": self.with_secret,
            **({"versions": self.versions} if self.versions else {}),
            **({"images": self.images} if self.images is not None else {}),
        }

    @classmethod
    def read(cls, body: dict[str, Any]) -> Registration:
        """By check_registration's rules; ``with_secret`` other than true is false (the
        original's runner does not send it, nor ``versions`` or ``images``)."""
        name, capabilities = check_registration(body.get("name"), body.get("capabilities"))
        versions = check_versions(body.get("versions"), capabilities)
        images = check_images(body.get("images"), capabilities)
        return cls(name, capabilities, body.get("with_secret") is True, versions, images)


@dataclass(slots=True)
class Registered:
    """The answer to a registration (the welcome says the same over WebSocket)."""

    runner_id: str
    message: str = field(default="Runner registered successfully", metadata=about(required=True))
    runner_secret: str | None = field(
        default=None,
        metadata=about(
            "The runner's own secret, when asked for (`with_secret`); shown once. Send it"
            " as `X-Runner-Secret` from then on.",
            type="string",  # left out when not asked for, never null
        ),
    )

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runner_id": self.runner_id, "message": self.message}
        if self.runner_secret is not None:
            out["runner_secret"] = self.runner_secret
        return out
