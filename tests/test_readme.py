"""The README and docs/ tell the truth: settings tables, commands run as printed, links."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runpack.settings import settings_table
from tests.procs import clean_env, running_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETTINGS = DOCS / "settings.md"
API = DOCS / "api.md"

# As a new user would: every curl must succeed (a 4xx/5xx makes the script fail).
PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'


def test_settings_table_matches_settings() -> None:
    text = SETTINGS.read_text()
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert match, "docs/settings.md has no settings table markers"
    assert match.group(1) == settings_table(), "regenerate with: runpack settings --markdown"


def test_runner_settings_table_matches_runner_settings() -> None:
    from runpack_runner.cli import settings_table as runner_table

    text = SETTINGS.read_text()
    match = re.search(
        r"<!-- runner-settings-table:start -->\n(.*?)\n<!-- runner-settings-table:end -->",
        text,
        re.S,
    )
    assert match, "docs/settings.md has no runner settings table markers"
    assert match.group(1) == runner_table(), "regenerate: runpack-runner --settings-markdown"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def section(path: Path, heading: str) -> str:
    return path.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def run_script(script: str, cwd: Path, port: str, limit: float) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the documentation's examples")
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    return subprocess.run(
        ["bash", "-c", PRELUDE + script],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=limit,
    )


def test_api_curl_examples_work_as_printed(tmp_path: Path) -> None:
    examples = blocks(API.read_text(), "sh")
    assert len(examples) >= 10
    # A server started with no keys in this folder (it writes runpack-data/dev-keys.env),
    # then every command of docs/api.md from the same folder, in order.
    with running_server(tmp_path) as server:
        port = server.url.rsplit(":", 1)[1]
        script = "\n".join(examples) + f"\ncurl -s http://127.0.0.1:{port}/health\n"
        result = run_script(script, tmp_path, port, limit=60)
        assert result.returncode == 0, result.stdout + result.stderr + server.output()
    out = result.stdout
    assert '"message":"Job queued successfully"' in out
    assert '"message":"Job already completed (cached result)"' in out
    assert '"output_data":{"answer":42}' in out
    assert '"message":"Job marked as failed successfully"' in out
    assert '"message":"Job deleted successfully"' in out
    assert '"status":"ok"' in out
    words = "ef5b05a961b4c934b17999593e4b7253614d6c99d26d6e50b843e546d79e57e5"
    assert f'{{"sha256":"{words}","bytes":14}}' in out
    assert "HTTP/1.1 200 OK" in out


@pytest.mark.timeout(120)
def test_readme_first_job_works_as_printed(tmp_path: Path) -> None:
    text = section(README, "## A first job")
    commands = blocks(text, "sh")
    [program] = blocks(text, "python")
    assert "first_job.py" in commands[-1]
    (tmp_path / "first_job.py").write_text(program)
    # What `make run` starts, with no keys, in this folder; then the README's commands
    # from another shell in the same folder.
    args = ("--db", "runpack.db", "--local-runners", "1")
    # Then what a newcomer tries next, from the same shell: the client example and a
    # burst of new jobs, well past the per-address limit for new work. A server with
    # generated keys never limits this machine's own clients.
    example = Path(__file__).resolve().parents[1] / "examples" / "client_example.py"
    more = [
        f".venv/bin/python {example}",
        "for i in $(seq 1 30); do .venv/bin/runpack submit hello_world -p name=n$i "
        "-p processing_time=0 -q >> ids.txt || exit 1; done",
    ]
    with running_server(tmp_path, args=args) as server:
        port = server.url.rsplit(":", 1)[1]
        result = run_script("\n".join(commands + more), tmp_path, port, limit=100)
        assert result.returncode == 0, result.stdout + result.stderr + server.output()
    said = result.stdout + result.stderr
    # No 429 anywhere (a job id may hold the digits "429", never as a word).
    assert "Rate limit exceeded" not in said and not re.search(r"\b429\b", said), said
    assert len(set((tmp_path / "ids.txt").read_text().split())) == 30
    out = result.stdout
    assert 'event: status\ndata: {"status":"completed"' in out  # the stream, by curl
    assert '"result":{"output_data":{"message":"Hello, Ada!","processing_time":3}' in out
    assert '"message": "Hello, Ada!"' in out  # the command line's result, from the cache
    assert "Job already completed (cached result)" in result.stderr
    assert "{'message': 'Hello, Grace!', 'processing_time': 2}" in out  # Python


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (outside code blocks)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked here
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)
