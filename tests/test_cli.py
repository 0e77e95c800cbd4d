from support import run_cli, run_python, tensorflow_only

import adafilter_keras

pytestmark = tensorflow_only


_run = run_cli


def test_version_prints_the_package_version():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"adafilter-keras {adafilter_keras.__version__}"


def test_help_explains_the_command():
    result = _run("--help")
    assert result.returncode == 0
    assert "usage: adafilter-keras" in result.stdout
    assert "AdaFilter" in result.stdout and "--version" in result.stdout


def test_unknown_option_fails_with_usage():
    result = _run("--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr


def test_tensorflow_start_up_lines_are_caught_and_its_errors_shown(capfd):
    import os

    from adafilter_keras import console

    with console._caught_stderr(console._ERROR_LINE):
        os.write(2, b"I0000 00:00:1.2 3 cudart_stub.cc:31] info line\n")
        os.write(2, b"E0000 00:00:1.2 3 cuda_platform.cc:52] an error line\n")
        os.write(2, b"ImportError: numpy.core.multiarray failed to import\n")
    err = capfd.readouterr().err
    assert "an error line" in err and "info line" not in err and "ImportError" in err
    # The command imports the library, and so TensorFlow, with the start-up lines caught.
    fresh = _run("--version")
    assert fresh.returncode == 0 and fresh.stdout.startswith("adafilter-keras ")
    assert "absl::InitializeLog" not in fresh.stderr
    assert not [
        line for line in fresh.stderr.splitlines() if line[:1] in "IW" and line[1:5] == "0000"
    ]


def test_importing_the_library_leaves_stderr_alone():
    # Only the command line quiets TensorFlow: a program that imports the library keeps file
    # descriptor 2 and sys.stderr as they were (TensorFlow's own lines pass unfiltered), and
    # sees what it writes there afterwards.
    result = run_python(
        """
        import os, sys

        redirections = []
        dup2 = os.dup2
        os.dup2 = lambda fd, fd2, *args: (redirections.append(fd2), dup2(fd, fd2, *args))[1]
        before, stream = os.fstat(2), sys.stderr
        assert "keras" not in sys.modules
        import adafilter_keras
        assert "keras" in sys.modules
        after = os.fstat(2)
        assert 2 not in redirections, redirections
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        assert sys.stderr is stream
        os.write(2, b"written to fd 2 after the import\\n")
        print("written to sys.stderr after the import", file=sys.stderr)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "written to fd 2 after the import" in result.stderr
    assert "written to sys.stderr after the import" in result.stderr
    from adafilter_keras import console

    assert not console.started_as_command(["python", "-c", "import adafilter_keras"])
    assert console.started_as_command(["/venv/bin/python", "/venv/bin/adafilter-keras", "train"])
    assert console.started_as_command(["python", "-m", "adafilter_keras.cli", "--version"])


def test_every_command_takes_verbose():
    from adafilter_keras.cli import build_parser

    for command in (["train", "--dataset", "uci_digits"], ["tune", "--dataset", "uci_digits"],
                    ["demo"], ["benchmark"], ["compare", "runs"], ["datasets"]):  # fmt: skip
        assert build_parser().parse_args([*command, "--verbose"]).verbose is True


def test_every_command_help_shows_percent_signs_once():
    import argparse

    from adafilter_keras.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    texts = {name: sub.format_help() for name, sub in commands.choices.items()}
    assert "95% interval" in " ".join(texts["benchmark"].split())  # wherever argparse wraps
    assert not [name for name, text in texts.items() if "%%" in text]
