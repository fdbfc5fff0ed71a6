"""Which local image a container job names: its digest checked, never a tag's guess."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from runpack_runner.container_spec import ContainerPolicy, ContainerSpec, is_tag

log = logging.getLogger(__name__)


def digests_of(api: Any, tag: str) -> list[str]:
    """The image ID and repository digests that ``tag`` has on this runner (none: [])."""
    import docker

    try:
        info = api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return []
    return [str(info["Id"]), *(info.get("RepoDigests") or [])]


def resolve(api: Any, spec: ContainerSpec) -> dict[str, Any]:
    """The local image that ``spec.image`` names, checked against its digest.

    ``sha256:<id>`` is an image ID; ``name@sha256:<d>`` is a repository digest, or
    (an image loaded with ``docker import``/``load`` has none) the ID of an image
    tagged ``name:…`` here.
    """
    import docker

    try:
        info: dict[str, Any] = api.inspect_image(spec.image)
    except docker.errors.ImageNotFound:
        info = {}
        if spec.name:
            with contextlib.suppress(docker.errors.ImageNotFound):
                info = api.inspect_image(spec.digest)
            tags = info.get("RepoTags") or []
            if spec.name not in {*tags, *(tag.rsplit(":", 1)[0] for tag in tags)}:
                info = {}
    if not info:
        raise RuntimeError(f"image {spec.image} is not on this runner (pull or load it there)")
    names = {str(info["Id"]), *(info.get("RepoDigests") or [])}
    if spec.digest != info["Id"] and spec.image not in names:
        raise RuntimeError(f"image {spec.image} resolved to {info['Id']}, not the digest asked for")
    return info


def advertised(policy: ContainerPolicy, connect: Callable[[], Any]) -> list[str] | None:
    """The allow list the runner sends when it registers (None: it has none), its tags
    resolved on this runner now: a tag that moves is seen at the next registration (a
    reconnect). A tag that cannot be resolved (no such image, dockerd down) allows
    nothing until then."""
    if not any(is_tag(entry) for entry in policy.allowed):
        return policy.advertised(lambda tag: ())
    api = None
    try:
        api = connect()
        return policy.advertised(lambda tag: digests_of(api, tag))
    except Exception as exc:
        log.warning("cannot resolve the tags of the allowed images: %s", exc)
        return policy.advertised(lambda tag: ())
    finally:
        if api is not None:
            api.close()
