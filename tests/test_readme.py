"""README.md: short, every number from a committed file, and its quickstarts run as written."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_names_both_commands():
    assert len(README.splitlines()) <= 200 and len(README) <= 12_000
    assert "make demo" in README and "make test" in README


def test_which_method_rows_are_the_studys_answer():
    """Each row of "Which method for which job" repeats a row of RESULTS.md's generated answer."""
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    answer = results.split("<!-- the answer:", 1)[1].split("<!-- end of the answer -->", 1)[0]
    rows = [r for r in answer.splitlines() if re.match(r"\| (objects|styles) \| \d+ \|", r)]
    assert len(rows) == 3
    section = README.split("## Which method for which job", 1)[1].split("\n## ", 1)[0]
    for row in rows:
        domain, requests, run, retention, ua = [c.strip() for c in row.strip("|").split("|")][:5]
        mine = next(r for r in section.splitlines() if r.startswith(f"| erase {requests} {domain} |"))
        name = re.match(r"\*\*(.+?)\*\*", run).group(1)
        assert f"({name}" in mine and f"| {retention} | {ua} |" in mine, (row, mine)


# written on another branch at the same time as this test; remove once it is merged
NOT_YET_MERGED: set[str] = set()


def test_links_point_at_files_that_exist():
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))):
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            path = (doc.parent / target).resolve()
            if target.startswith("http") or str(path.relative_to(ROOT)) in NOT_YET_MERGED:
                continue
            assert path.exists(), f"{doc.relative_to(ROOT)} links {target}, which does not exist"


def test_python_quickstart_runs_as_written(tmp_path, monkeypatch):
    """Erase a style from MiniCanvas, export, load with plain diffusers, evaluate: the README's block."""
    block = README.split("## Quickstart: Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    assert (tmp_path / "exported" / "py" / "model_index.json").is_file() and (tmp_path / "fire.png").is_file()
    ua, ra_i, ra_c = printed[0]
    assert ua >= 50 and ra_i >= 50 and ra_c >= 50  # fire erased, the rest kept (uce on MiniCanvas: 100, 100, 96.9)


def test_command_line_quickstart_runs_as_written(tmp_path):
    """The README's command-line block, line for line, in a fresh directory (`.venv/bin/` is this
    interpreter's): list, two uce requests, eval, export, and plain diffusers on the export."""
    block = README.split("## Quickstart: the command line", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block.count(".venv/bin/") >= 6
    script = "set -euo pipefail\n" + block.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "uce" in done.stdout and "erase_scale" in done.stdout  # `list` and `list uce` printed
    metrics = json.loads((tmp_path / "runs" / "mine-eval" / "metrics.json").read_text())
    assert metrics["UA"] >= 50 and metrics["RA_C"] >= 50  # fire and ice erased, objects kept
    assert (tmp_path / "exported" / "mine" / "model_index.json").is_file() and (tmp_path / "fire.png").is_file()


def test_user_facing_text_names_no_issue_and_no_missing_spec():
    """Docs, help, docstrings, comments and example files say what things are, not which issue
    asked for them (the history is in git), and cite no document that does not exist."""
    files = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").rglob("*.md"), *(ROOT / "src").rglob("*.py"),
             *(ROOT / "scripts").glob("*.py"), *(ROOT / "configs").rglob("*.yaml"), *(ROOT / "src").rglob("*.yaml")]
    found = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), start=1):
            if re.search(r"\b[Ii]ssues? \d+|\bSPEC\b", line):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
