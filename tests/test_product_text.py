"""The product's text holds no development history.

The README, the docs, the package, the examples and the benchmarks describe the library as it is;
how it got there belongs in CHANGELOG.md and git history, and investigations in research/. This
test fails on words that only make sense inside the project's development ("session 12", "the
issue"), naming every file and line.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Product files: what a user reads or runs. Not research/ (investigations keep their own record)
# and not CHANGELOG.md (history is its purpose).
SCANNED = ["README.md", "docs", "adafilter_keras", "examples", "benchmarks"]
TEXT_SUFFIXES = {".py", ".md", ".txt", ".cfg", ".ini", ".toml", ".yml", ".yaml"}
HISTORY = re.compile(r"\bsessions?[ -]\d+|\bthe issue\b", re.IGNORECASE)


def _product_files():
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                yield file


def history_lines(files):
    """`file:line: text` for every line of `files` that speaks of the project's history."""
    found = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if HISTORY.search(line):
                name = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
                found.append(f"{name.as_posix()}:{number}: {line.strip()}")
    return found


def test_the_scan_covers_the_product():
    files = {file.relative_to(ROOT).as_posix() for file in _product_files()}
    assert {"README.md", "adafilter_keras/__init__.py", "docs/wrapping.md"} <= files
    assert not any(file.startswith(("research/", "CHANGELOG")) for file in files)


def test_the_scan_catches_history(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Fine.\nMeasured in Session 14.\nAs the issue asks.\nThe sessions table.\n"
        "The session-16 runs.\nIssues: none.\n"
    )
    found = history_lines([page])
    assert [line.split(": ", 1)[1] for line in found] == [
        "Measured in Session 14.",
        "As the issue asks.",
        "The session-16 runs.",
    ]


def test_no_development_history_in_the_product():
    found = history_lines(_product_files())
    assert not found, "development history in product files:\n" + "\n".join(found)
