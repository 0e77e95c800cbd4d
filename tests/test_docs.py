"""The commands and links in README.md and docs/*.md match the code, so the docs cannot drift.

Every line of every ```bash block is one command (a trailing `\\` continues it on the next line, `#`
starts a comment). A command of `adafilter-keras` or of a script in examples/ or benchmarks/ is
parsed by that command's own argument parser, and the settings of `train` and `tune` are built as a
`TrainConfig` (which validates them) and their dataset looked up in the registry; nothing runs. A
command that needs ImageNet weights or a TFDS download says `# needs network` on its line. Other
programs must be on an allow-list, so that a new kind of command gets a decision here. Commands
quoted inline in the prose (`adafilter-keras ...`, `python examples/...`) must parse too. Every
```python block must compile, every relative link must point to a file (and heading), and the
README stays a front page of at most 120 lines.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import io
import pathlib
import re
import shlex

import pytest

from adafilter_keras import cli
from adafilter_keras.backbones import hub
from adafilter_keras.data import registry
from adafilter_keras.training.config import BACKEND_DISTRIBUTIONS
from adafilter_keras.transfer import command as transfer_command

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *API_PAGES]

# Programs whose commands are shown but not checked against this library's code.
UNCHECKED_PROGRAMS = {"pip", "tox", "git", "tensorboard", "cd", "export", "ls", "cat", "."}
UNCHECKED_PYTHON_MODULES = {"pytest", "venv", "pip"}
# Programs that run another command (their options written `--name=value`).
LAUNCHERS = {"srun"}
PYTHONS = {"python", "python3"}
SCRIPT_FOLDERS = ("examples", "benchmarks")
SCRIPTS = sorted(path for folder in SCRIPT_FOLDERS for path in (ROOT / folder).glob("*.py"))
NETWORK_NOTE = "needs network"
_FENCE = re.compile(r"^\s*```\s*(\S*)")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_INLINE_COMMAND = re.compile(r"^(adafilter-keras|python3? (examples|benchmarks)/)")


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Overrides conftest's: nothing here builds a model, and clearing takes 0.3 s a test."""
    yield


@dataclasses.dataclass(frozen=True)
class Command:
    """One documented command: where it is, its text without the comment, and the comment."""

    page: str
    line: int
    text: str
    comment: str = ""
    exported: tuple = ()  # `NAME=VALUE` pairs an `export` line set earlier in the same block

    @property
    def where(self):
        return f"{self.page}:{self.line}"

    def fail(self, why):
        pytest.fail(f"{self.where}: `{self.text}` {why}", pytrace=False)


def _relative(path):
    return path.relative_to(ROOT).as_posix()


def _split_comment(line):
    """The line's code and its comment (a `#` after whitespace, outside quotes, starts one)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def _prose_and_fences(path):
    """Yields (line number, line, language of the fenced block it is in or None)."""
    language = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if fence:
            language = (fence.group(1) or "text") if language is None else None
            continue
        yield number, line, language


def bash_commands(path):
    """Every command in the ```bash blocks of `path`, `\\` continuations joined."""
    commands, parts, start, comments, exported = [], [], None, [], {}
    for number, line, language in _prose_and_fences(path):
        if language != "bash":
            exported = {}
            continue
        code, comment = _split_comment(line.strip())
        if not code and not parts:
            continue
        start = start or number
        comments.append(comment)
        if code.endswith("\\"):
            parts.append(code[:-1].strip())
            continue
        parts.append(code)
        text = " ".join(part for part in parts if part)
        commands.append(
            Command(
                _relative(path),
                start,
                text,
                " ".join(filter(None, comments)),
                tuple(exported.items()),
            )
        )
        if text.startswith("export "):
            exported.update(pair.split("=", 1) for pair in text.split()[1:] if "=" in pair)
        parts, start, comments = [], None, []
    assert not parts, f"{_relative(path)}: the bash block ends in a `\\` continuation"
    return commands


def inline_commands(path):
    """Commands quoted in the prose as inline code, such as `adafilter-keras train --help`."""
    numbered = list(_prose_and_fences(path))
    text = "\n".join(line if language is None else "" for _, line, language in numbered)
    commands = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        if _INLINE_COMMAND.match(span):
            number = numbered[text.count("\n", 0, match.start())][0]
            commands.append(Command(_relative(path), number, span))
    return commands


BASH_COMMANDS = [command for page in PAGES for command in bash_commands(page)]
INLINE_COMMANDS = [command for page in PAGES for command in inline_commands(page)]


def _ids(commands):
    return [command.where for command in commands]


def _parse(parser, argv, command):
    """The parsed arguments, or None where the command exits 0 by itself (`--help`)."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            return parser.parse_args(argv)
    except SystemExit as exit:
        if exit.code in (0, None):
            return None
        errors = output.getvalue().strip().splitlines() or [f"exit status {exit.code}"]
        command.fail(f"does not parse: {errors[-1]}")  # argparse's error comes after the usage


def _validated(command, check, *args):
    try:
        return check(*args)
    except ValueError as error:
        command.fail(f"has settings the code refuses: {error}")


def _check_train_settings(args, command, defaults, validate):
    if not validate or args.config:  # a --config file is read only when the command runs
        return
    if hub.is_preset(getattr(args, "backbone", None)) and not hub.installed():
        pytest.skip(f"{command.where}: a keras-hub preset, and keras_hub is not installed")
    config = _validated(command, cli._config_from_args, args, defaults)
    spec = _validated(command, registry.get, config.dataset)
    # A local keras-hub preset directory holds its weights: nothing to download.
    downloads = config.resolved_weights == "imagenet" and not hub.is_directory(config.backbone)
    if (downloads or spec.source == "tfds") and (NETWORK_NOTE not in command.comment):
        command.fail(
            f"downloads ImageNet weights or a TFDS dataset: its line must say `# {NETWORK_NOTE}`"
        )


def check_cli(argv, command, defaults=None, validate=True):
    """Checks `adafilter-keras ARGV` (with `defaults` under the flags, as example scripts give)."""
    args = _parse(cli.build_parser(), argv, command)
    if args is None:
        return
    if args.command in ("train", "tune"):
        _check_train_settings(args, command, defaults, validate)
    elif args.command == "benchmark" and validate:
        _validated(command, transfer_command.settings_from, args)


@functools.cache
def _load_script(path):
    name = f"_documented_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run nothing unless they are __main__
    return module


def check_script(argv, command, validate=True):
    """Checks `python SCRIPT ARGS` for a script in examples/ or benchmarks/."""
    path = (ROOT / argv[0]).resolve()
    if path.parent.name not in SCRIPT_FOLDERS or not path.is_file():
        command.fail(f"runs {argv[0]}, which is not a script in {' or '.join(SCRIPT_FOLDERS)}/")
    module, rest = _load_script(path), argv[1:]
    if hasattr(module, "build_parser"):  # a script with its own flags
        args = _parse(module.build_parser(), rest, command)
        if args is not None and validate and module.__dict__.get("command") is transfer_command:
            _validated(command, transfer_command.settings_from, args)
    elif hasattr(module, "split_args"):  # `adafilter-keras train` with flags of its own
        rest, defaults = module.split_args(rest)
        check_cli(["train", *rest], command, defaults, validate)
    elif hasattr(module, "DEFAULTS"):  # `adafilter-keras train` with its own defaults
        check_cli(["train", *rest], command, module.DEFAULTS, validate)
    elif hasattr(module, "demo_main"):  # `adafilter-keras demo`
        check_cli(["demo", *rest], command, validate=validate)
    else:
        command.fail(
            f"runs {argv[0]}, which exposes no build_parser(), split_args(), DEFAULTS or "
            "demo_main for this test to check its flags with"
        )


@contextlib.contextmanager
def _backend_choices(backend):
    """Parses with the `--distribution` choices of the backend the command names, if it does."""
    if backend is None:
        yield
        return
    original = cli._backend_distributions
    cli._backend_distributions = lambda: (None, *BACKEND_DISTRIBUTIONS[backend])
    try:
        yield
    finally:
        cli._backend_distributions = original


def check(command, validate=True):
    """Checks one documented command against the code (see the module docstring)."""
    lexer = shlex.shlex(command.text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    redirected = len(tokens) >= 2 and tokens[-2] in (">", ">>")
    if redirected:
        tokens = tokens[:-2]  # the output sent to a file: still one command
    if any(token and set(token) <= set("();<>|&") for token in tokens):
        command.fail("chains commands: write one command per line")
    argv = shlex.split(command.text)[: -2 if redirected else None]
    environment = dict(command.exported)
    while argv and _ENV_ASSIGNMENT.match(argv[0]):
        environment.update([argv[0].split("=", 1)])
        argv = argv[1:]
    if argv and argv[0] in LAUNCHERS:  # `srun [OPTIONS] COMMAND`: check the command
        argv = argv[1:]
        while argv and argv[0].startswith("-"):
            argv = argv[1:]
    if not argv:
        command.fail("is empty")
    program = argv[0]
    if program == "adafilter-keras":
        with _backend_choices(environment.get("KERAS_BACKEND")):
            check_cli(argv[1:], command, validate=validate)
    elif program in PYTHONS and argv[1:2] == ["-m"]:
        if argv[2:3] and argv[2] not in UNCHECKED_PYTHON_MODULES:
            command.fail(f"runs module {argv[2]!r}: check it here or add it to the allow-list")
    elif program in PYTHONS and len(argv) > 1 and argv[1].endswith(".py"):
        check_script(argv[1:], command, validate)
    elif program == "bash":
        if len(argv) < 2 or not (ROOT / argv[1]).is_file():
            command.fail("runs a bash script that is not in the repository")
    elif program not in UNCHECKED_PROGRAMS:
        command.fail(
            f"runs {program!r}, which this test does not know: check it here or add it to "
            "UNCHECKED_PROGRAMS"
        )


def test_the_docs_have_commands():
    pages = {command.page for command in BASH_COMMANDS}
    assert {"README.md", "docs/training.md", "docs/tuning.md", "docs/benchmark.md"} <= pages
    assert any(c.text.startswith("adafilter-keras train ") for c in BASH_COMMANDS)


@pytest.mark.parametrize("command", BASH_COMMANDS, ids=_ids(BASH_COMMANDS))
def test_documented_command_matches_the_code(command):
    check(command)


@pytest.mark.parametrize("command", INLINE_COMMANDS, ids=_ids(INLINE_COMMANDS))
def test_command_quoted_in_the_prose_parses(command):
    check(command, validate=False)


@pytest.mark.parametrize("script", SCRIPTS, ids=[_relative(s) for s in SCRIPTS])
def test_every_script_can_be_checked(script):
    check(Command(_relative(script), 0, f"python {_relative(script)} --help"))


@pytest.mark.parametrize(
    "text, why",
    [
        ("adafilter-keras train --dataset uci_digits --no-such-flag 1", "does not parse"),
        ("adafilter-keras train --dataset uci_digits --method magic", "settings the code refuses"),
        ("adafilter-keras train --dataset no_such_data --weights none", "code refuses"),
        ("adafilter-keras train --dataset stanford_dogs", "needs network"),
        ("adafilter-keras benchmark --shots 0", "settings the code refuses"),
        ("python examples/train_dogs.py --no-such-flag", "does not parse"),
        ("python benchmarks/step_time.py --no-such-flag", "does not parse"),
        ("python benchmarks/step_time.py --models small --batch-size 4", "not both"),
        ("python examples/no_such_script.py", "not a script"),
        ("rm -rf runs", "does not know"),
        ("pip install . && tox", "one command per line"),
        ("srun --nodes=2 adafilter-keras train --dataset uci_digits --bad 1", "does not parse"),
        (
            "KERAS_BACKEND=torch adafilter-keras train --dataset uci_digits --weights none "
            "--backbone SmallResNet --distribution data_parallel",
            "does not parse",
        ),
    ],
)
def test_the_check_catches_drift(text, why):
    with pytest.raises(pytest.fail.Exception, match=why):
        check(Command("test", 0, text))


RESULTS = pathlib.Path("benchmarks") / "results"


def _committed_benchmark_commands():
    """The documented `adafilter-keras benchmark` commands that name a committed results folder."""
    found = []
    for command in BASH_COMMANDS + INLINE_COMMANDS:
        argv = shlex.split(command.text)
        if argv[:2] != ["adafilter-keras", "benchmark"]:
            continue
        try:
            output_dir = cli.build_parser().parse_args(argv[1:]).output_dir
        except SystemExit:
            continue  # test_documented_command_matches_the_code reports it
        if RESULTS in pathlib.Path(output_dir).parents:
            found.append(command)
    return found


COMMITTED_BENCHMARK_COMMANDS = _committed_benchmark_commands()


@pytest.mark.parametrize(
    "command", COMMITTED_BENCHMARK_COMMANDS, ids=_ids(COMMITTED_BENCHMARK_COMMANDS)
)
def test_documented_benchmark_command_resumes_its_committed_runs(command):
    """Run again, a documented benchmark command finds every run it names and runs nothing."""
    import json

    from adafilter_keras.transfer.runs import Benchmark

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
        command.fail(
            f"would run {len(missing)} of {benchmark.total_runs()} runs that "
            f"{args.output_dir} does not hold (first: {missing[0]}); give the flags its runs "
            "were made with (e.g. --large-epochs 4 --large-seeds 0 1 2 3 4)"
        )


def test_committed_benchmark_commands_are_checked():
    # The investigations' commands are checked the same way in research/tests/test_readmes.py.
    assert len(COMMITTED_BENCHMARK_COMMANDS) >= 5


def test_the_cheapest_documented_command_runs(capsys):
    documented = [c for c in BASH_COMMANDS if c.text == "adafilter-keras datasets"]
    assert documented, "`adafilter-keras datasets` is no longer documented; run another command"
    assert cli.main(shlex.split(documented[0].text)[1:]) == 0
    assert "uci_digits" in capsys.readouterr().out


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
    return {
        _slug(line.lstrip("#"))
        for _, line, language in _prose_and_fences(path)
        if language is None and re.match(r"#{1,6} ", line)
    }


def _links():
    links = []
    for page in PAGES:
        for number, line, language in _prose_and_fences(page):
            if language is not None:
                continue
            prose = re.sub(r"`[^`]*`", "", line)
            for target in re.findall(r"\]\(([^)\s]+)\)", prose):
                if not re.match(r"[a-z]+:", target):
                    links.append(pytest.param(page, target, id=f"{_relative(page)}:{number}"))
    return links


@pytest.mark.parametrize("page, target", _links())
def test_relative_link_points_to_a_file(page, target):
    file, _, anchor = target.partition("#")
    path = (page.parent / file).resolve() if file else page
    assert path.exists(), f"{_relative(page)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{_relative(page)} links to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_every_code_fence_is_closed(page):
    # An unclosed fence turns the rest of the page into one code block, and the checks above then
    # skip its commands and links without failing.
    lines = page.read_text(encoding="utf-8").splitlines()
    fences = [number for number, line in enumerate(lines, 1) if _FENCE.match(line)]
    assert len(fences) % 2 == 0, f"{_relative(page)}: a code fence is not closed (lines {fences})"


def _python_blocks(path):
    """(first line number, source) of every ```python block of `path`."""
    blocks, lines, start = [], [], None
    for number, line, language in _prose_and_fences(path):
        if language == "python":
            start = start or number
            lines.append(line)
        elif lines:
            blocks.append((start, "\n".join(lines)))
            lines, start = [], None
    return blocks


PYTHON_BLOCKS = [
    pytest.param(page, start, source, id=f"{_relative(page)}:{start}")
    for page in PAGES
    for start, source in _python_blocks(page)
]


@pytest.mark.parametrize("page, start, source", PYTHON_BLOCKS)
def test_python_snippet_compiles(page, start, source):
    # Snippets need data, weights or a trained model to run; they must at least be Python.
    try:
        compile(source, f"{_relative(page)}:{start}", "exec")
    except SyntaxError as error:
        pytest.fail(f"{_relative(page)}:{start + (error.lineno or 1) - 1}: {error.msg}")


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines; move detail into docs/"
    assert PYTHON_BLOCKS and any(p.values[0].name == "README.md" for p in PYTHON_BLOCKS)


# The API reference: every public name has an entry (`::: adafilter_keras.PATH` in docs/api/*.md).
_REFERENCE = re.compile(r"^::: (adafilter_keras(?:\.\w+)*)\s*$", re.MULTILINE)
# Public entry points outside `adafilter_keras.__all__` that the reference must hold too.
ENTRY_POINTS = ["data.load", "data.LoadedDataset", "TrainConfig"]
# The layers, each constructor argument of which the reference must describe.
LAYERS = ["AdaFilterConv2D", "GatedBatchNorm", "GateController"]


def references(pages):
    """`{dotted path: page}` of the `::: adafilter_keras...` entries of `pages`."""
    return {
        path: page
        for page in pages
        for path in _REFERENCE.findall(page.read_text(encoding="utf-8"))
    }


def undocumented(names, pages):
    """The names (`wrap`, `data.load`) that no entry of `pages` documents."""
    documented = references(pages)
    return sorted(
        name
        for name in names
        if not any(
            path == f"adafilter_keras.{name}" or path.endswith(f".{name.rsplit('.', 1)[-1]}")
            for path in documented
        )
    )


def _public_names():
    import adafilter_keras

    return sorted(adafilter_keras.__all__)


def test_every_public_name_has_a_reference_entry():
    missing = undocumented([*_public_names(), *ENTRY_POINTS], API_PAGES)
    assert not missing, (
        f"no API reference entry for {missing}: add `::: adafilter_keras.NAME` to a page of "
        "docs/api/ (and the page to mkdocs.yml's nav)"
    )


def test_the_reference_check_catches_a_missing_name(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# API\n\n::: adafilter_keras.wrap\n\n::: adafilter_keras.data.load\n")
    assert undocumented(["wrap", "data.load", "gate_report", "data.LoadedDataset"], [page]) == [
        "data.LoadedDataset",
        "gate_report",
    ]


def test_every_reference_entry_names_an_object():
    # mkdocstrings fails the build on an entry it cannot find; this says which, without building.
    for path, page in references(API_PAGES).items():
        module_name, target = path, []
        while module_name:
            try:
                obj = importlib.import_module(module_name)
                break
            except ModuleNotFoundError:
                module_name, _, last = module_name.rpartition(".")
                target.insert(0, last)
        for name in target:
            assert hasattr(obj, name), f"{_relative(page)}: `::: {path}` names no object"
            obj = getattr(obj, name)


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_argument_is_described(name):
    import inspect

    import adafilter_keras

    layer = getattr(adafilter_keras, name)
    arguments = [a for a in inspect.signature(layer.__init__).parameters if a != "self"]
    described = (inspect.getdoc(layer) or "").partition("Args:")[2]
    missing = [a for a in arguments if not re.search(rf"^\s*\**{a}\b[^:\n]*:", described, re.M)]
    assert not missing, f"{name}'s docstring (Args:) does not describe {missing}"


def test_every_command_is_in_the_command_line_reference():
    import argparse

    page = (ROOT / "docs" / "api" / "cli.md").read_text(encoding="utf-8")
    commands = next(
        action.choices
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    missing = [name for name in commands if f"| `{name}` |" not in page]
    assert not missing, f"docs/api/cli.md does not list the commands {missing}"
