"""``hello_world``: greets, taking ``processing_time`` seconds (the original's test job)."""

from __future__ import annotations

import time
from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import HeartbeatCallback, JobHandler

MAX_PROCESSING_TIME = 300


class HelloWorld(JobHandler):
    """Params: ``name`` (str, default "World"), ``processing_time`` (seconds, 0 to 300),
    ``test_exception`` (bool: fail on purpose). Reports progress every second."""

    job_type = "hello_world"
    #: Trusted and idle (it waits): no process of its own.
    in_process = True
    time_limit = MAX_PROCESSING_TIME + 60.0

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        name, processing_time, test_exception = validate(input_params)
        # The runner passes a JobContext; any other callback gets the console text.
        is_ctx = isinstance(heartbeat_callback, JobContext)
        ctx = heartbeat_callback if isinstance(heartbeat_callback, JobContext) else JobContext()

        def beat(current: int, total: int) -> None:
            console = None if is_ctx else ctx.console
            heartbeat_callback(
                progress_current=current, progress_total=total, console_output=console
            )

        ctx.log(f"Starting hello_world job for {name}")
        ctx.log(f"Processing time: {processing_time} seconds")
        start = time.monotonic()
        total = int(processing_time)
        beat(0, total)
        while (elapsed := time.monotonic() - start) < processing_time:
            if ctx.wait(min(1.0, processing_time - elapsed)):
                ctx.log("Cancelled")
                break
            elapsed = time.monotonic() - start
            ctx.log(f"Progress: {min(int(elapsed), total)}/{total} s")
            beat(min(int(elapsed), total), total)
        else:
            ctx.log("Completed!")
        if test_exception:
            ctx.log("Raising test exception as requested")
            raise RuntimeError("Test exception raised for testing purposes")
        return {"message": f"Hello, {name}!", "processing_time": processing_time}


def validate(params: dict[str, Any]) -> tuple[str, int | float, bool]:
    """The original's checks; ValueError names the bad parameter."""
    name = params.get("name", "World")
    if not isinstance(name, str):
        raise ValueError(f"Parameter 'name' must be a string, got {type(name).__name__}")
    if "processing_time" not in params:
        raise ValueError("Missing required parameter: 'processing_time'")
    processing_time = params["processing_time"]
    if isinstance(processing_time, bool) or not isinstance(processing_time, int | float):
        raise ValueError(
            f"Parameter 'processing_time' must be a number, got {type(processing_time).__name__}"
        )
    if not processing_time >= 0:  # also rejects NaN
        raise ValueError(f"Parameter 'processing_time' must be non-negative, got {processing_time}")
    if processing_time > MAX_PROCESSING_TIME:
        raise ValueError(
            f"Parameter 'processing_time' must not exceed {MAX_PROCESSING_TIME} seconds, "
            f"got {processing_time}"
        )
    test_exception = params.get("test_exception", False)
    if not isinstance(test_exception, bool):
        raise ValueError(
            f"Parameter 'test_exception' must be a boolean, got {type(test_exception).__name__}"
        )
    return name, processing_time, test_exception
