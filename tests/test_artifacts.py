"""Figure files: upload as the runner holding the job, serve them, validate and delete them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from runpack import hashing
from runpack.artifacts import content_type
from runpack.errors import BadRequest
from runpack.jobtypes import FIGURE_METADATA, HashIgnored, JobTypeVersions
from runpack.settings import Settings
from runpack.uploads import MANIFEST, check_path
from tests.conftest import (
    ADMIN,
    RUNNER,
    SUBMIT,
    MakeClient,
    as_runner,
    claim,
    register,
    submit,
)

JOB = "figure_job"
FILES = {
    "index.html": b"<!doctype html><title>figure</title>",
    "assets/index-abc.js": b"console.log('figure');" * 10,
    "assets/style.css": b"body{}",
    "data.zarr/.zmetadata": b'{"metadata": {}}',
    "data.zarr/_consolidated_0.dat": bytes(range(256)) * 8,
    "video.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(100),
    "extension_manifest.json": b"{}",
}


def tar_of(files: dict[str, bytes], *, gz: bool = False, extra: Any = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    body = raw.getvalue()
    return gzip.compress(body) if gz else body


async def held_job(client: TestClient, **params: Any) -> tuple[str, str]:
    """A job claimed by a new runner: (job_id, runner_id)."""
    job_id = (await submit(client, JOB, nwb_url="https://x/a.nwb", **params))["job_id"]
    runner_id = await register(client, caps=[JOB])
    await claim(client, runner_id, job_id)
    return job_id, runner_id


async def upload(client: TestClient, job_id: str, runner_id: str, body: bytes) -> Any:
    return await client.post(
        f"/api/runner/jobs/{job_id}/files",
        data=body,
        headers={**as_runner(runner_id), "Content-Type": "application/x-tar"},
    )


def figures_root(settings: Settings) -> Path:
    return Path(settings.data_dir) / "figures"


def manifest_of(settings: Settings, job_id: str) -> dict[str, Any]:
    data = (figures_root(settings) / "manifests" / f"{job_id}.json").read_bytes()
    return dict(json.loads(data))


def blob_of(settings: Settings, job_id: str, path: str) -> Path:
    """The stored file that serves ``path`` of a job's figure."""
    entry = next(e for e in manifest_of(settings, job_id)["files"] if e["path"] == path)
    digest = entry["sha256"]
    return figures_root(settings) / "blobs" / digest[:2] / digest


async def test_upload_then_serve_with_types_ranges_and_caching(
    client: TestClient, settings: Settings
) -> None:
    job_id, runner_id = await held_job(client)
    resp = await upload(client, job_id, runner_id, tar_of(FILES))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    version = body["version"]
    base = f"{settings.base_url}/figures/{job_id}/{version}/"
    assert body["url"] == base
    assert body["figpack_url"] == base + "index.html"
    assert body["files"] == len(FILES)
    assert body["bytes"] == sum(len(v) for v in FILES.values())
    at = f"/figures/{job_id}/{version}"
    for name, data in FILES.items():
        got = await client.get(f"{at}/{name}")
        assert got.status == 200, name
        assert await got.read() == data
        assert got.headers["Access-Control-Allow-Origin"] == "*"
        assert got.headers["Content-Type"].split(";")[0] == content_type(name).split(";")[0]
    types = {
        "index.html": "text/html",
        "assets/index-abc.js": "text/javascript",
        "assets/style.css": "text/css",
        "data.zarr/.zmetadata": "application/json",
        "data.zarr/_consolidated_0.dat": "application/octet-stream",
        "video.mp4": "video/mp4",
    }
    for name, kind in types.items():
        got = await client.head(f"{at}/{name}")
        assert got.headers["Content-Type"].startswith(kind), name
    js = await client.get(f"{at}/assets/index-abc.js")
    assert js.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    index = await client.get(f"{at}/index.html")
    assert index.headers["Cache-Control"] == "no-cache"  # an older version's is redirected
    assert index.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
    # Every figure response is sandboxed, not only pages (a runner names the types).
    assert js.headers["Content-Security-Policy"] == index.headers["Content-Security-Policy"]
    folder = await client.get(f"{at}/")
    assert await folder.read() == FILES["index.html"]
    # Unversioned URLs (results stored before versions) lead to the current version.
    for old, new in (("", "index.html"), ("/", "index.html"), ("/assets/style.css", None)):
        moved = await client.get(f"/figures/{job_id}{old}", allow_redirects=False)
        assert moved.status == 307, old
        assert moved.headers["Location"] == f"{at}/{new or old.lstrip('/')}"
        assert moved.headers["Cache-Control"] == "no-cache"
    # HTTP range requests, as figpack's viewer reads its zarr data.
    part = await client.get(f"{at}/data.zarr/_consolidated_0.dat", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes 10-19/2048"
    assert await part.read() == FILES["data.zarr/_consolidated_0.dat"][10:20]
    # A preflight for a cross-origin range request.
    pre = await client.options(
        f"{at}/data.zarr/_consolidated_0.dat",
        headers={"Origin": "https://neurosift.app", "Access-Control-Request-Headers": "range"},
    )
    assert pre.status == 204
    assert "Range" in pre.headers["Access-Control-Allow-Headers"]
    assert "Content-Range" in pre.headers["Access-Control-Expose-Headers"]
    # No figpack.json: that is figpack's cloud's, and its viewer would offer to manage it there.
    assert (await client.get(f"{at}/figpack.json")).status == 404


async def test_missing_files_folders_and_the_manifest_are_404(client: TestClient) -> None:
    job_id, runner_id = await held_job(client)
    stored = await upload(client, job_id, runner_id, tar_of(FILES))
    version = (await stored.json())["version"]
    for path in ("nope.js", "assets", "assets/", MANIFEST, "data.zarr/%2E%2E/%2E%2E/x"):
        resp = await client.get(f"/figures/{job_id}/{version}/{path}")
        assert resp.status == 404, path
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    other = "00000000-0000-4000-8000-000000000000"
    assert (await client.get(f"/figures/{other}/index.html")).status == 404
    assert (await client.get("/figures/not-a-job/index.html")).status == 404
    assert (await client.get("/figures/..%2F..%2Fetc/passwd")).status == 404


async def test_upload_needs_the_runner_that_holds_the_job(client: TestClient) -> None:
    job_id, runner_id = await held_job(client)
    body = tar_of(FILES)
    headers = {"Content-Type": "application/x-tar"}
    no_runner = await client.post(
        f"/api/runner/jobs/{job_id}/files", data=body, headers={**RUNNER, **headers}
    )
    assert no_runner.status == 400
    wrong_key = await client.post(
        f"/api/runner/jobs/{job_id}/files",
        data=body,
        headers={**SUBMIT, "X-Runner-ID": runner_id, **headers},
    )
    assert wrong_key.status in (401, 403)
    other = await register(client, "r2", caps=[JOB])
    assert (await upload(client, job_id, other, body)).status == 400
    pending = (await submit(client, JOB, nwb_url="https://x/b.nwb"))["job_id"]
    assert (await upload(client, pending, runner_id, body)).status == 400
    assert (await upload(client, "not-a-uuid", runner_id, body)).status == 400
    assert (await client.get(f"/figures/{job_id}/index.html")).status == 404
    assert (await upload(client, job_id, runner_id, body)).status == 201


@pytest.mark.parametrize(
    "name",
    ["../x", "/abs", "a/../../b", "a\\b", "a//b", "./../x", "x" * 2000, "a/" + "b" * 300, MANIFEST],
)
async def test_paths_that_would_leave_the_folder_are_refused(
    client: TestClient, settings: Settings, name: str
) -> None:
    job_id, runner_id = await held_job(client)
    resp = await upload(client, job_id, runner_id, tar_of({"index.html": b"ok", name: b"bad"}))
    assert resp.status == 400, name
    assert (await resp.json())["error"] == "Invalid file path"
    assert not (figures_root(settings) / "manifests" / f"{job_id}.json").exists()
    assert not (figures_root(settings) / "blobs").exists()
    assert not (Path(settings.data_dir) / "x").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
async def test_links_and_special_files_are_refused(client: TestClient, kind: bytes) -> None:
    job_id, runner_id = await held_job(client)

    def add_link(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("link")
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    resp = await upload(client, job_id, runner_id, tar_of({"index.html": b"ok"}, extra=add_link))
    assert resp.status == 400
    assert "regular files" in (await resp.json())["error"]


def test_check_path_rejects_nul_control_characters_and_escapes() -> None:
    for bad in ["a\x00b", "a\nb", "", "..", "a/./b", "/x", "a\\b", "a/"]:
        with pytest.raises(BadRequest):
            check_path(bad)
    assert check_path("data.zarr/.zmetadata") == "data.zarr/.zmetadata"
    assert check_path("assets/index-BD6xv7FX.js") == "assets/index-BD6xv7FX.js"


async def test_size_and_file_count_limits_answer_413(make_client: MakeClient) -> None:
    client = await make_client(max_upload_bytes=3000, max_upload_files=3)
    job_id, runner_id = await held_job(client)
    big = await upload(client, job_id, runner_id, tar_of({"index.html": bytes(5000)}))
    assert big.status == 413
    assert "3000 bytes" in (await big.json())["error"]
    # A gzip body under the limit whose contents are over it.
    bomb = await upload(client, job_id, runner_id, tar_of({"index.html": bytes(3500)}, gz=True))
    assert bomb.status == 413
    many = {f"f{i}.txt": b"x" for i in range(4)}
    count = await upload(client, job_id, runner_id, tar_of(many, gz=True))
    assert count.status == 413
    assert "3 files" in (await count.json())["error"]


async def test_bad_archives_are_400_and_gzip_is_accepted(client: TestClient) -> None:
    job_id, runner_id = await held_job(client)
    assert (await upload(client, job_id, runner_id, b"not a tar archive" * 40)).status == 400
    assert (await upload(client, job_id, runner_id, b"")).status == 400
    assert (await upload(client, job_id, runner_id, tar_of({}))).status == 400
    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("index.html")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
    assert (await upload(client, job_id, runner_id, dup.getvalue())).status == 400
    assert (await upload(client, job_id, runner_id, tar_of(FILES, gz=True))).status == 201


async def test_a_new_upload_replaces_the_old_figure(client: TestClient, settings: Settings) -> None:
    job_id, runner_id = await held_job(client)
    first = await (await upload(client, job_id, runner_id, tar_of(FILES))).json()
    old_video = blob_of(settings, job_id, "video.mp4")
    second = await upload(client, job_id, runner_id, tar_of({"index.html": b"v2"}))
    assert second.status == 201
    body = await second.json()
    assert body["version"] != first["version"]  # other files: another URL
    old_at, at = f"/figures/{job_id}/{first['version']}", f"/figures/{job_id}/{body['version']}"
    assert body["figpack_url"] == f"{settings.base_url}{at}/index.html"
    assert await (await client.get(f"{at}/index.html")).read() == b"v2"
    # The old URL, and the old version's other files, lead to the current version.
    moved = await client.get(f"{old_at}/index.html", allow_redirects=False)
    assert moved.status == 307
    assert moved.headers["Location"] == f"{at}/index.html"
    assert await (await client.get(f"{old_at}/index.html")).read() == b"v2"
    assert (await client.get(f"{old_at}/video.mp4")).status == 404
    assert not old_video.exists()  # no figure names it any more
    # The same files again: the same version, the same URL.
    third = await upload(client, job_id, runner_id, tar_of({"index.html": b"v2"}))
    assert (await third.json())["version"] == body["version"]


async def complete(client: TestClient, job_id: str, runner_id: str, url: str) -> Any:
    return await client.post(
        f"/api/runner/jobs/{job_id}/complete",
        json={"output_data": {"figpack_url": url}, "console_output": "done"},
        headers=as_runner(runner_id),
    )


async def test_complete_needs_the_files_then_validation_checks_them_on_disk(
    client: TestClient, settings: Settings
) -> None:
    job_id, runner_id = await held_job(client)
    url = f"{settings.base_url}/figures/{job_id}/index.html"
    early = await complete(client, job_id, runner_id, url)
    assert early.status == 400
    assert "upload them" in (await early.json())["error"]
    assert (await upload(client, job_id, runner_id, tar_of(FILES))).status == 201
    assert (await complete(client, job_id, runner_id, url)).status == 200
    again = await submit(client, JOB, nwb_url="https://x/a.nwb")
    assert again["status"] == "completed"
    assert again["result"]["output_data"]["figpack_url"] == url
    # A file shrinks on disk: the figure is incomplete, the job expires and is queued again.
    video = blob_of(settings, job_id, "video.mp4")
    video.chmod(0o644)
    video.write_bytes(b"short")
    check = await client.post(
        "/api/jobs/check",
        json={"job_type": JOB, "input_params": {"nwb_url": "https://x/a.nwb"}},
        headers=SUBMIT,
    )
    assert (await check.json())["status"] == "expired"
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": JOB, "input_params": {"nwb_url": "https://x/a.nwb"}},
        headers=SUBMIT,
    )
    assert resp.status == 201
    assert (await resp.json())["job_id"] == job_id


async def test_deleting_a_job_deletes_its_files(client: TestClient, settings: Settings) -> None:
    job_id, runner_id = await held_job(client)
    url = (await (await upload(client, job_id, runner_id, tar_of(FILES))).json())["figpack_url"]
    blobs = [blob_of(settings, job_id, name) for name in FILES]
    assert all(blob.is_file() for blob in blobs)
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    assert resp.status == 200
    assert not any(blob.exists() for blob in blobs)
    assert list((figures_root(settings) / "manifests").iterdir()) == []
    for gone in (url.removeprefix(settings.base_url), f"/figures/{job_id}/index.html"):
        assert (await client.get(gone, allow_redirects=False)).status == 404
    assert list((figures_root(settings) / ".incoming").iterdir()) == []


async def test_metadata_params_of_figure_jobs_do_not_split_the_cache(client: TestClient) -> None:
    params = {"nwb_url": "https://x/a.nwb", "units_path": "/units"}
    a = await submit(
        client, "figpack_nwb_raster_plot", **params, neurosift_url="https://neurosift.app/?p=1"
    )
    b = await submit(
        client,
        "figpack_nwb_raster_plot",
        **params,
        neurosift_url="https://neurosift.app/?p=2",
        dandiset_id="000409",
    )
    c = await submit(client, "figpack_nwb_raster_plot", **params)
    assert a["job_id"] == b["job_id"] == c["job_id"]
    other = await submit(client, "figpack_nwb_raster_plot", **{**params, "units_path": "/u2"})
    assert other["job_id"] != a["job_id"]
    # Other job types keep the original's hash: every parameter counts.
    d = await submit(client, "hello_world", name="Ada", neurosift_url="1")
    e = await submit(client, "hello_world", name="Ada", neurosift_url="2")
    assert d["job_id"] != e["job_id"]
    # The first submit's metadata is what the job keeps.
    detail = await (await client.get(f"/api/admin/jobs/{a['job_id']}")).json()
    assert detail["input_params"]["neurosift_url"] == "https://neurosift.app/?p=1"


async def test_the_hash_ignored_params_are_the_operators_setting(make_client: MakeClient) -> None:
    """The figure job types' rule is the setting's default; an operator may name others,
    or none (every parameter counts, as in the original)."""
    params = {"nwb_url": "https://x/a.nwb", "units_path": "/units"}
    plain = await make_client(hash_ignored_params="")
    a = await submit(plain, "figpack_nwb_raster_plot", **params, neurosift_url="1")
    b = await submit(plain, "figpack_nwb_raster_plot", **params, neurosift_url="2")
    assert a["job_id"] != b["job_id"]
    mine = await make_client(hash_ignored_params="hello_world=page; other_* = page , tab")
    c = await submit(mine, "hello_world", name="Ada", page="1")
    d = await submit(mine, "hello_world", name="Ada", page="2")
    assert c["job_id"] == d["job_id"]
    e = await submit(mine, "other_kind", name="Ada", page="1", tab="x")
    f = await submit(mine, "other_kind", name="Ada", page="2")
    assert e["job_id"] == f["job_id"]
    g = await submit(mine, "figpack_nwb_raster_plot", **params, neurosift_url="1")
    h = await submit(mine, "figpack_nwb_raster_plot", **params, neurosift_url="2")
    assert g["job_id"] != h["job_id"]


@pytest.mark.parametrize("text", ["figpack", "=a", "x=", "a*b=c", "ok=a;bad"])
def test_a_hash_ignored_rule_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="hash_ignored_params"):
        HashIgnored.parse(text)


def test_the_default_rule_ignores_the_figure_metadata_only() -> None:
    rules = HashIgnored.parse(FIGURE_METADATA)
    params = {"nwb_url": "u", "neurosift_url": "n", "dandiset_id": "d"}
    assert rules.hash_params("figpack_nwb_video_preview", params) == {"nwb_url": "u"}
    assert rules.hash_params("figpack_other", params) == params
    assert rules.hash_params("hello_world", params) == params


async def test_a_figure_folder_that_cannot_be_removed_is_left_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting a job on a read-only disk: its rows are gone already, so the folder
    is left (for `runpack gc`) with a warning, and the delete does not fail."""
    import errno
    import uuid

    from runpack import artifacts

    figures = artifacts.FigureStore(tmp_path / "figures", "http://127.0.0.1:1", 10**6, 100)
    job_id = str(uuid.uuid4())
    folder = tmp_path / "figures" / job_id
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<html></html>")

    def read_only(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(artifacts.os, "rename", read_only)
    assert await figures.remove(job_id) is False
    assert (folder / "index.html").exists()
    assert "Read-only file system" in caplog.text
    monkeypatch.undo()
    assert await figures.remove(job_id) is True
    assert not folder.exists()


async def test_a_figure_stored_before_versions_keeps_working_from_its_old_url(
    client: TestClient, settings: Settings
) -> None:
    """A folder of the old layout, named by a completed job's result: the old URL leads
    to the current version, the folder moves into the blob store on first use, and the
    cached result stays valid."""
    job_id, runner_id = await held_job(client)
    folder = figures_root(settings) / job_id
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    listed = [{"path": name, "size": len(data)} for name, data in FILES.items()]
    (folder / MANIFEST).write_text(json.dumps({"version": 1, "job_id": job_id, "files": listed}))
    url = f"{settings.base_url}/figures/{job_id}/index.html"
    assert (await complete(client, job_id, runner_id, url)).status == 200

    moved = await client.get(f"/figures/{job_id}/index.html", allow_redirects=False)
    assert moved.status == 307
    version = manifest_of(settings, job_id)["version"]
    assert moved.headers["Location"] == f"/figures/{job_id}/{version}/index.html"
    assert not folder.exists()  # its files are blobs now
    for name, data in FILES.items():
        got = await client.get(f"/figures/{job_id}/{name}")  # redirects followed
        assert await got.read() == data, name
        assert blob_of(settings, job_id, name).read_bytes() == data
    again = await submit(client, JOB, nwb_url="https://x/a.nwb")
    assert again["status"] == "completed"
    assert again["result"]["output_data"]["figpack_url"] == url


async def test_a_job_type_version_enters_the_hash_of_that_type_only(
    make_client: MakeClient,
) -> None:
    """A new version of a handler computes again; other job types keep the original's hash."""
    plain = await make_client()
    versioned = await make_client(job_type_versions="hello_world=2; container*=1")
    for client in (plain, versioned):
        other = await submit(client, "figpack_nwb_raster_plot", nwb_url="https://x/a.nwb")
        detail = await (await client.get(f"/api/admin/jobs/{other['job_id']}")).json()
        assert detail["job_hash"] == hashing.job_hash(
            "figpack_nwb_raster_plot", {"nwb_url": "https://x/a.nwb"}
        )
    job = await submit(versioned, "hello_world", name="Ada")
    detail = await (await versioned.get(f"/api/admin/jobs/{job['job_id']}")).json()
    canonical = '{"type":"hello_world","version":"2","params":{"name":"Ada"}}'
    assert detail["job_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert detail["job_hash"] != hashing.job_hash("hello_world", {"name": "Ada"})
    assert JobTypeVersions.parse("container*=1").version("container") == "1"


@pytest.mark.parametrize("text", ["x", "=1", "x=", "a*b=1"])
def test_a_job_type_version_rule_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="job_type_versions"):
        JobTypeVersions.parse(text)
