from support import run_cli, tensorflow_only

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
