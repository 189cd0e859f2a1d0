"""The command lines' error boundary: a mistake in the user's input (a flag, a path, a mesh, a
directory, a dataset) prints one line naming the fix and exits 2, without a traceback;
`--debug` shows it. Anything else keeps its traceback.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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
    skip_absent_tpu()
    try:
        return main(args)
    except user_errors() as e:
        if debug:
            raise
        print(f"error: {one_line(e)}\n(run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show on the PCI bus under Google's vendor id
NVIDIA_DEVICE = "/dev/nvidia0"


def skip_absent_tpu() -> None:
    """Run on the CPU where libtpu is installed (the `tpu` extra, for compile-only checks) but
    there is neither a TPU chip nor an NVIDIA GPU: JAX would otherwise start libtpu, which prints
    warnings about the missing TPU. An explicit JAX_PLATFORMS is left alone; compile-only
    checks reach libtpu by themselves."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    google_devices = [v for v in glob.glob("/sys/bus/pci/devices/*/vendor")
                      if Path(v).read_text().strip() == GOOGLE_PCI_VENDOR]  # fmt: skip
    if google_devices or os.path.exists(NVIDIA_DEVICE):
        return
    import jax

    jax.config.update("jax_platforms", "cpu")
