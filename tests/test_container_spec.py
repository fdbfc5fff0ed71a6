"""A container job's parameters and the runner's rules, without Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runpack_runner.container_config import create_args
from runpack_runner.container_console import MAX_LINE, follow
from runpack_runner.container_spec import ContainerPolicy, Limits, parse_spec
from runpack_runner.context import Cancelled, JobContext
from runpack_runner.gpus import GpuPool
from runpack_runner.settings import RunnerSettings

ID = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def nothing(tag: str) -> list[str]:
    return []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "Missing required parameter: 'image'"),
        ({"image": "busybox:1.36"}, "Parameter 'image' is not pinned ('busybox:1.36')"),
        ({"image": "sha256:abc"}, "is not pinned"),
        ({"image": ID, "command": "echo hi"}, "must be a list of strings"),
        ({"image": ID, "command": []}, "must be a list of 1 to 256 strings"),
        ({"image": ID, "command": ["echo", 1]}, "Each 'command' argument must be a string"),
        ({"image": ID, "env": {"A-B": "x"}}, "'A-B' is not a variable name"),
        ({"image": ID, "env": {"JOB_ID": "x"}}, "JOB_ID is set by the runner"),
        ({"image": ID, "env": {"A": 1}}, "Parameter 'env': A must be a string"),
        ({"image": ID, "limits": {"swap": 1}}, "unknown swap"),
        ({"image": ID, "limits": {"cpus": 0}}, "cpus must be a number more than 0"),
        ({"image": ID, "limits": {"memory_mb": 1.5}}, "memory_mb must be a whole number"),
        ({"image": ID, "limits": {"pids": True}}, "pids must be a number more than 0"),
        ({"image": ID, "network": "host"}, "Unknown parameters: network"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_spec(params)
    assert message in str(caught.value)


def test_a_pinned_reference_names_its_repository_and_digest() -> None:
    spec = parse_spec({"image": f"ghcr.io/lab/tool@{ID}", "command": ["run"], "env": {"A": "1"}})
    assert (spec.name, spec.digest, spec.command, spec.env) == (
        "ghcr.io/lab/tool",
        ID,
        ("run",),
        {"A": "1"},
    )
    assert parse_spec({"image": ID}).name == ""


def test_limits_default_to_the_runner_maximum_and_may_only_be_lower() -> None:
    policy = ContainerPolicy(most=Limits(cpus=2, memory_mb=256, pids=64, time_limit=30))
    assert policy.limits(parse_spec({"image": ID})) == Limits(2, 256, 64, 30)
    lower = parse_spec({"image": ID, "limits": {"cpus": 0.5, "memory_mb": 16, "time_limit": 1}})
    assert policy.limits(lower) == Limits(0.5, 16, 64, 1)
    with pytest.raises(ValueError, match=r"memory_mb 512 is more than this runner allows \(256\)"):
        policy.limits(parse_spec({"image": ID, "limits": {"memory_mb": 512}}))


def test_no_image_is_allowed_by_default() -> None:
    spec = parse_spec({"image": ID})
    policy = ContainerPolicy()
    assert not policy.allows(spec, nothing)
    assert "allows no images (RUNPACK_CONTAINER_IMAGES is empty)" in policy.refusal(spec)


def test_allowed_by_digest_pattern_or_a_tag_on_this_runner() -> None:
    pinned = parse_spec({"image": f"lab/tool@{ID}"})
    bare = parse_spec({"image": ID})
    assert ContainerPolicy(allowed=(ID,)).allows(bare, nothing)
    assert not ContainerPolicy(allowed=(OTHER,)).allows(bare, nothing)
    assert ContainerPolicy(allowed=("lab/tool@*",)).allows(pinned, nothing)
    assert not ContainerPolicy(allowed=("lab/other@*",)).allows(pinned, nothing)
    assert not ContainerPolicy(allowed=("lab/tool@*",)).allows(bare, nothing)
    # A tag allows whatever digest it has here, and only that.
    looked_up: list[str] = []

    def tags(tag: str) -> list[str]:
        looked_up.append(tag)
        return [ID] if tag == "lab/tool:1" else []

    assert ContainerPolicy(allowed=("lab/tool:1",)).allows(bare, tags)
    assert ContainerPolicy(allowed=("lab/tool:1",)).allows(pinned, tags)
    other = parse_spec({"image": OTHER})
    assert not ContainerPolicy(allowed=("lab/tool:1", "x@*")).allows(other, tags)
    assert looked_up == ["lab/tool:1"] * 3  # patterns and digests are never looked up


def test_the_runner_settings_check_container_limits() -> None:
    settings = RunnerSettings.from_env(
        {"RUNPACK_CONTAINER_IMAGES": f"{ID}, lab/*@*", "RUNPACK_CONTAINER_MEMORY_MB": "128"}
    )
    assert settings.container_images == (ID, "lab/*@*")
    assert settings.container_memory_mb == 128
    with pytest.raises(ValueError, match="must be at least 1"):
        RunnerSettings.from_env({"RUNPACK_CONTAINER_PIDS": "0"})
    for root in ("0", "0:0", "root", "root:1000"):
        with pytest.raises(ValueError, match="container_user must not be root"):
            RunnerSettings.from_env({"RUNPACK_CONTAINER_USER": root})


def test_gpus_are_given_only_when_asked_and_at_most_the_runners() -> None:
    policy = ContainerPolicy(most=Limits(cpus=1, memory_mb=64, pids=8, time_limit=5, gpus=2))
    assert policy.limits(parse_spec({"image": ID})).gpus == 0
    assert policy.limits(parse_spec({"image": ID, "limits": {"gpus": 2}})).gpus == 2
    with pytest.raises(ValueError, match=r"gpus 3 is more than this runner allows \(2\)"):
        policy.limits(parse_spec({"image": ID, "limits": {"gpus": 3}}))
    with pytest.raises(ValueError, match=r"gpus 1 is more than this runner allows \(0\)"):
        ContainerPolicy().limits(parse_spec({"image": ID, "limits": {"gpus": 1}}))


def test_the_gpu_pool_hands_out_each_gpu_once_and_takes_it_back() -> None:
    pool = GpuPool(["GPU-a", "GPU-b", "GPU-c"])
    first = pool.take(2)
    assert first == ["GPU-a", "GPU-b"]
    assert pool.take(2) is None
    assert pool.take(1) == ["GPU-c"]
    pool.give_back(first)
    pool.give_back(["GPU-a", "not-ours"])  # twice, or not ours: ignored
    assert sorted(pool.take(2) or []) == ["GPU-a", "GPU-b"]
    assert pool.take(1) is None
    ctx = JobContext("j")
    ctx.cancel("stop")
    with pytest.raises(Cancelled, match="stop"):
        pool.wait_for(1, ctx)
    assert "Waiting for 1 free GPU(s)" in ctx.console


def offline_api() -> Any:
    docker = pytest.importorskip("docker")
    return docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")


def test_what_a_container_is_given(tmp_path: Path) -> None:
    spec = parse_spec({"image": ID, "command": ["run"], "env": {"A": "1"}})
    limits = Limits(cpus=0.5, memory_mb=32, pids=16, time_limit=9, gpus=2)
    args = create_args(
        offline_api(),
        spec,
        limits,
        image_id=ID,
        outputs=tmp_path,
        inputs=tmp_path / "in",
        job_cache=tmp_path / "cache",
        user="65534:65534",
        tmp_mb=8,
        job_id="job-1",
        attempt=2,
        gpus=["GPU-a", "GPU-b"],
    )
    host = args.pop("host_config")
    assert args == {
        "image": ID,
        "command": ["run"],
        "environment": {
            "A": "1",
            "JOB_ID": "job-1",
            "JOB_ATTEMPT": "2",
            "OUTPUTS_DIR": "/outputs",
            "CUDA_VISIBLE_DEVICES": "0,1",
            "JOB_CACHE_DIR": "/job-cache",
        },
        "user": "65534:65534",
        "working_dir": "/tmp",
        "network_disabled": True,
        "labels": {"org.runpack.job-id": "job-1", "org.runpack.attempt": "2"},
    }
    assert host["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["GPU-a", "GPU-b"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert not host.get("Privileged")
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (
        500_000_000,
        32 * 2**20,
        32 * 2**20,
        16,
    )
    assert host["Binds"] == [
        f"{tmp_path}:/outputs:rw",
        f"{tmp_path}/in:/inputs:ro",
        f"{tmp_path}/cache:/job-cache:rw",
    ]
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=8m,mode=1777"}
    without = create_args(
        offline_api(),
        spec,
        limits,
        image_id=ID,
        outputs=tmp_path,
        inputs=None,
        job_cache=None,
        user="1000:1000",
        tmp_mb=8,
        job_id="job-1",
        attempt=1,
        gpus=[],
    )
    assert "DeviceRequests" not in without["host_config"]
    assert without["host_config"]["Binds"] == [f"{tmp_path}:/outputs:rw"]
    assert "CUDA_VISIBLE_DEVICES" not in without["environment"]


def test_a_job_cache_is_for_the_images_named_one_folder_per_repository() -> None:
    policy = ContainerPolicy(job_cache=("lab/*@*",))
    assert policy.job_cache_folder(parse_spec({"image": f"lab/tool@{ID}"})) == "lab_tool"
    assert policy.job_cache_folder(parse_spec({"image": f"lab/tool@{OTHER}"})) == "lab_tool"
    assert policy.job_cache_folder(parse_spec({"image": f"other/tool@{ID}"})) is None
    assert ContainerPolicy().job_cache_folder(parse_spec({"image": ID})) is None
    everything = ContainerPolicy(job_cache=("*",))
    assert everything.job_cache_folder(parse_spec({"image": ID})) == ID.replace(":", "_")


def test_console_lines_keep_to_their_stream_and_progress_is_not_printed() -> None:
    ctx = JobContext("j")
    follow(
        ctx,
        [
            (None, b"sh: "),  # stderr writes its line in pieces
            (b"out\nRUNPACK_PROGRESS 3/10\r\n", None),
            (None, b"can't create\n"),
            (b"x" * (MAX_LINE + 5), None),  # no newline: cut at MAX_LINE
            (b"\nRUNPACK_PROGRESS 4\nend", None),
        ],
    )
    lines = [line.split("] ", 1)[-1] for line in ctx.console.splitlines()]
    assert lines == ["out", "sh: can't create", "x" * MAX_LINE, "xxxxx", "end"]
    snap = ctx.snapshot()
    assert (snap.progress_current, snap.progress_total) == (4, 10)
