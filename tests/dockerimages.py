"""Images for the container tests, built here from Debian's ``busybox-static`` (no registry).

The root filesystem is ``/bin/busybox`` (a static binary) with a link per applet, an
``/etc/passwd``, and any extra files; it goes to dockerd with ``docker import``. A test
that needs dockerd is skipped when it cannot be reached, except under ``CI=true``, where
it fails (``.ci/run`` installs and starts it).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

import pytest

DOCKER_URL = "unix:///var/run/docker.sock"
BUSYBOX = "/bin/busybox"
#: Every image these tests build is in this repository, tagged per build.
REPOSITORY = "runpack-test/busybox"
LABEL_JOB = "org.runpack.job-id"


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it (.ci/run starts dockerd)", pytrace=False)
    pytest.skip(message)


def connect() -> Any:
    """A docker-py API client, or skip (fail under CI=true)."""
    try:
        import docker
    except ImportError:
        unavailable("docker-py is not installed (pip install 'runpack[container]')")
    try:
        return docker.APIClient(base_url=DOCKER_URL, version="auto", timeout=30)
    except docker.errors.DockerException as exc:
        unavailable(f"dockerd is not reachable at {DOCKER_URL} ({exc})")


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: bytes = b"",
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    mode: int = 0o644,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def rootfs(files: Mapping[str, str] = {}) -> bytes:
    """A tar of a busybox root filesystem with ``files`` (path → text) added."""
    if not os.path.exists(BUSYBOX):
        unavailable(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for folder in ("bin", "etc", "outputs"):
            _add(tar, folder, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "tmp", kind=tarfile.DIRTYPE, mode=0o1777)  # Docker keeps it on the tmpfs
        with open(BUSYBOX, "rb") as binary:
            _add(tar, "bin/busybox", data=binary.read(), mode=0o755)
        for applet in applets:
            if applet != "busybox":
                _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        _add(
            tar, "etc/passwd", data=b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
        )
        for path, text in files.items():
            _add(tar, path.lstrip("/"), data=text.encode(), mode=0o755)
    return out.getvalue()


def build(api: Any, files: Mapping[str, str] = {}) -> tuple[str, str]:
    """Import a busybox image; (its ``repository:tag``, its image ID)."""
    tag = uuid.uuid4().hex[:12]
    api.import_image_from_data(
        rootfs(files), repository=REPOSITORY, tag=tag, changes=["ENV PATH=/bin"]
    )
    name = f"{REPOSITORY}:{tag}"
    return name, str(api.inspect_image(name)["Id"])


def remove(api: Any, name: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        api.remove_image(name, force=True)


def containers_of(api: Any, job_id: str) -> list[dict[str, Any]]:
    """Every container (running or not) labelled with this job: ``docker ps -a``."""
    return list(api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"}))
