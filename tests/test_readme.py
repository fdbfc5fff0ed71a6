"""The README tells the truth: its settings table and its curl examples."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from runpack.settings import settings_table
from tests.procs import clean_env, running_server

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_table_matches_settings() -> None:
    text = README.read_text()
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert match, "README has no settings table markers"
    assert match.group(1) == settings_table(), "regenerate with: runpack settings --markdown"


def test_runner_settings_table_matches_runner_settings() -> None:
    from runpack_runner.cli import settings_table as runner_table

    text = README.read_text()
    match = re.search(
        r"<!-- runner-settings-table:start -->\n(.*?)\n<!-- runner-settings-table:end -->",
        text,
        re.S,
    )
    assert match, "README has no runner settings table markers"
    assert match.group(1) == runner_table(), "regenerate: runpack-runner --settings-markdown"


def example_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## The API by example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_readme_curl_examples_work_as_printed(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README's examples")
    blocks = example_blocks()
    assert len(blocks) >= 10
    # As a new user would: a server started with no keys in this folder (it writes
    # runpack-data/dev-keys.env), then the README's commands from the same folder.
    with running_server(tmp_path) as server:
        port = server.url.rsplit(":", 1)[1]
        script = "\n".join(blocks).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        script += f"\ncurl -s http://127.0.0.1:{port}/health\n"
        # Every curl must succeed: a 4xx/5xx makes the script fail here.
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
        result = subprocess.run(
            ["bash", "-c", prelude + script],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr + server.output()
    out = result.stdout
    assert '"message":"Job queued successfully"' in out
    assert '"message":"Job already completed (cached result)"' in out
    assert '"output_data":{"answer":42}' in out
    assert '"message":"Job marked as failed successfully"' in out
    assert '"message":"Job deleted successfully"' in out
    assert '"status":"ok"' in out
