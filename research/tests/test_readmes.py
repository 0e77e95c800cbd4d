"""The research READMEs' commands and links match the code and the committed runs.

The checks of tests/test_docs.py, applied to research/**/README.md: every ```bash command parses
(a research script's by its own `build_parser()`), every documented `adafilter-keras benchmark`
command finds all its runs in its output directory's committed runs.jsonl (so a README's numbers
are those of the runs next to it), and every relative link points to a file and heading.
"""

import importlib.util
import json
import pathlib
import re
import shlex

import pytest

from adafilter_keras import cli
from adafilter_keras.transfer import command as transfer_command
from adafilter_keras.transfer.runs import Benchmark

ROOT = pathlib.Path(__file__).resolve().parents[2]
READMES = sorted((ROOT / "research").glob("**/README.md"))


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs = _load(ROOT / "tests" / "test_docs.py", "_docs_checks")
COMMANDS = [command for page in READMES for command in docs.bash_commands(page)]
IDS = [command.where for command in COMMANDS]


def test_every_question_has_a_readme_with_commands():
    folders = [p for p in (ROOT / "research").iterdir() if p.is_dir() and p.name != "tests"]
    assert folders and all((folder / "README.md").is_file() for folder in folders)
    assert {pathlib.Path(c.page).parent.name for c in COMMANDS} >= {f.name for f in folders}


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_documented_command_parses(command):
    argv = shlex.split(command.text)
    if argv[0] in docs.PYTHONS and argv[1].startswith("research/"):
        path = ROOT / argv[1]
        if not path.is_file():
            command.fail(f"runs {argv[1]}, which is not a script")
        script = _load(path, f"_readme_{path.stem}")
        if docs._parse(script.build_parser(), argv[2:], command) is None:
            command.fail("only asks for help")
    else:
        docs.check(command)


BENCHMARK_COMMANDS = [c for c in COMMANDS if c.text.startswith("adafilter-keras benchmark ")]


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS, ids=[c.where for c in BENCHMARK_COMMANDS])
def test_documented_benchmark_command_finds_its_committed_runs(command):
    args = cli.build_parser().parse_args(shlex.split(command.text)[1:])
    benchmark = Benchmark(transfer_command.suite_from(args), ROOT / args.output_dir)
    runs = ROOT / args.output_dir / "runs.jsonl"
    if not runs.exists():
        command.fail(f"names {args.output_dir}, which has no committed runs.jsonl")
    done = {json.loads(line)["key"] for line in runs.read_text().splitlines() if line.strip()}
    missing = [
        (settings.model, cell, seed)
        for settings, cell, seed, key in benchmark.keys()
        if key not in done
    ]
    if missing:
        command.fail(f"would run {len(missing)} runs {args.output_dir} does not hold: {missing[0]}")


def _links():
    found = []
    for page in READMES:
        for number, line, language in docs._prose_and_fences(page):
            if language is None:
                for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
                    if not re.match(r"[a-z]+:", target):
                        found.append(
                            pytest.param(page, target, id=f"{page.relative_to(ROOT)}:{number}")
                        )
    return found


@pytest.mark.parametrize("page, target", _links())
def test_relative_link_points_to_a_file(page, target):
    file, _, anchor = target.partition("#")
    path = (page.parent / file).resolve() if file else page
    assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in docs._anchors(path), f"{page.relative_to(ROOT)}: no heading {target}"
