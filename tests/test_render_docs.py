"""docs/performance.md is the results files put together, and says which are stale."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import render_docs


def test_the_performance_page_is_current() -> None:
    """Regenerate with ``python benchmarks/render_docs.py`` after a benchmark run, or after a
    code change that makes a results file stale."""
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"],
        cwd=render_docs.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone has no history to tell stale results by")
    assert render_docs.OUT.read_text(encoding="utf-8") == render_docs.render()


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def commit(repo: Path, message: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def test_results_committed_before_a_code_change_are_stale_until_run_again(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    results = tmp_path / "benchmarks" / "results" / "x.md"
    commit(tmp_path, "code", {"clip_service/a.py": "1", "benchmarks/x.py": "1"})
    commit(tmp_path, "measured", {"benchmarks/results/x.md": "## X\n"})
    assert render_docs.staleness(results, "benchmarks/x.py", tmp_path) is None
    commit(tmp_path, "docs only", {"docs/a.md": "words"})
    assert render_docs.staleness(results, "benchmarks/x.py", tmp_path) is None
    commit(tmp_path, "the script changes", {"benchmarks/x.py": "2"})
    note = render_docs.staleness(results, "benchmarks/x.py", tmp_path)
    assert note is not None and note.startswith("stale: measured at commit ")
    assert "`benchmarks/x.py`" in note
    commit(tmp_path, "measured again", {"benchmarks/results/x.md": "## X, again\n"})
    assert render_docs.staleness(results, "benchmarks/x.py", tmp_path) is None
    commit(tmp_path, "the serving code changes", {"clip_service/a.py": "2"})
    assert render_docs.staleness(results, "benchmarks/x.py", tmp_path) is not None


def test_stale_results_are_listed_without_their_figures(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    results = tmp_path / "benchmarks" / "results"
    commit(tmp_path, "code", {"clip_service/a.py": "1", "benchmarks/serving_core.py": "1"})
    commit(
        tmp_path, "measured", {"benchmarks/results/serving_core.md": "## Core\n\n- rate: 4242/s\n"}
    )
    assert "4242/s" in render_docs.render(results, tmp_path)
    commit(tmp_path, "the serving code changes", {"clip_service/a.py": "2"})
    page = render_docs.render(results, tmp_path)
    assert "4242/s" not in page
    assert "- `serving_core.md`: measured at commit " in page
