"""User errors end in one line naming the fix (exit 2, no traceback; --debug shows it); internal
errors keep their traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from dr_jax import cli

ROOT = Path(__file__).resolve().parents[1]


def failing(error: BaseException):
    def main(argv: list[str]) -> None:
        assert "--debug" not in argv
        raise error

    return main


def test_a_user_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.run(failing(ValueError("--grpo.steps must be >= 1.\n  set it")), ["--x"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --grpo.steps must be >= 1. set it",
        "(run with --debug for the traceback)",
    ]


def test_debug_shows_the_traceback_and_internal_errors_keep_theirs():
    with pytest.raises(FileNotFoundError):
        cli.run(failing(FileNotFoundError("no such dir")), ["--debug"])
    with pytest.raises(RuntimeError, match="internal"):
        cli.run(failing(RuntimeError("internal")), [])


@pytest.mark.parametrize(
    "command, says",
    [
        (["-m", "dr_jax.data", "tests/data/deepresearcher"], "--split"),
        (["launch/train.py", "--mesh", "3x3", "--preset", "smoke"], "meshes that fit"),
        (["launch/eval.py", "run", "--dataset", "no/such.parquet", "--out-dir", "{tmp}"],
         "no/such.parquet"),
    ],
)  # fmt: skip
def test_the_command_lines_answer_bad_input_in_two_lines(command, says, tmp_path):
    """Nothing else on stderr: with libtpu installed and no TPU here, JAX runs on the CPU
    without starting libtpu (JAX_PLATFORMS is not set)."""
    command = [c.replace("{tmp}", str(tmp_path / "eval")) for c in command]
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    [error, hint] = done.stderr.splitlines()
    assert error.startswith("error: ") and says in error and "--debug" in hint
