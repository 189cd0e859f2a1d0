"""The command lines' error boundary: a mistake in the user's input (a flag, a path, a mesh, a
directory, a dataset) prints one line naming the fix and exits 2, without a traceback;
`--debug` shows it. Anything else keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

DEBUG_FLAG = "--debug"


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions dr_jax raises for bad input: its config checks and file lookups raise
    ValueError / FileNotFoundError, its setup checks their own kinds."""
    from dr_jax.judge import JudgeConfigError
    from dr_jax.tools.errors import ToolsSetupError
    from dr_jax.train.grpo import InfraFailure

    return (ValueError, FileNotFoundError, NotADirectoryError, JudgeConfigError, ToolsSetupError,
            InfraFailure)  # fmt: skip


def run(main: Callable[[list[str]], T], argv: Sequence[str] | None = None) -> T:
    """`main(argv)` with the boundary; `--debug` anywhere in argv is taken out and re-raises."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return main(args)
    except user_errors() as e:
        if debug:
            raise
        print(f"error: {one_line(e)}\n(run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
