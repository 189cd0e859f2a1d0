"""GRPO on several processes (a TPU pod slice, GPU hosts): what each host does alone, and
what all of them share.

The design is "every host holds the whole step; each host produces only its share of it":

- Data: every process keeps an identical `DataIterator` (same questions, same seed, restored
  from the same checkpoint), so all draw the same questions each step without talking.
- Rollouts: the step's questions x group_size trajectories, numbered in the order
  `Agent.rollout` returns them, are cut into one contiguous block per process
  (`host_share`); a host samples and runs the tools of its block only, with its own tool
  executor (and cache). A block keeps a group's samples together, so the searches one
  question triggers are de-duplicated by one executor. Each trajectory keeps its global
  (group_id, sample_index), and with them its sampling seeds, so the split does not change
  what is sampled. A colocated `JaxSampler` spans all processes: every host samples inside
  `sampler.lockstep()`. An SGLang sampler is just an HTTP client: each host sends its share.
- All-gather: each host serializes its trajectories (a JSON header + int32/float32 token
  arrays) and `process_allgather` exchanges the byte strings (padded to the longest).
  Every host then holds all trajectories, in the single-process order.
- From there the step is the single-process code on identical inputs: rewards and group
  advantages over whole groups, padded NumPy batches that `put_global` places as global
  arrays (each host contributes its addressable rows), the jitted learner, and identical
  metrics on every host.
- Writes: metrics.jsonl, TensorBoard, sample dumps and the warm-start HF directory come from
  process 0 only; Orbax checkpoints are saved and restored by every process (Orbax
  coordinates them), so the run directory must be on storage all hosts share.

Gathering trajectories (bytes) rather than arrays keeps the learner's input path unchanged
and costs little next to rollouts: ~13 bytes per token (id, mask, log-prob, text), so a
step of 4096 trajectories of 8k tokens moves ~430 MB to every host once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from dr_jax.progress import Progress
from dr_jax.rollout import JaxSampler
from dr_jax.rollout.trajectory import Trajectory

_ARRAYS = {
    "prompt_ids": np.int32,
    "response_ids": np.int32,
    "loss_mask": np.int8,
    "sampler_logprobs": np.float32,
}
"""Trajectory fields sent as raw arrays (the rest travel as JSON)."""


def is_main_process() -> bool:
    """Process 0: the one that writes metrics, samples and HF directories."""
    return jax.process_index() == 0


def host_share(total: int, index: int | None = None, count: int | None = None) -> range:
    """The contiguous block of `range(total)` process `index` of `count` works on (the first
    `total % count` processes take one item more)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    size, extra = divmod(total, count)
    start = index * size + min(index, extra)
    return range(start, start + size + (index < extra))


def barrier(name: str) -> None:
    """Every process waits here until all arrive (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(array: Any) -> np.ndarray:
    """The full value of a (possibly multi-host) array on this host."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def pack_trajectories(trajectories: Sequence[Trajectory]) -> bytes:
    """Bytes: 8-byte header length, a JSON header (one dict per trajectory, array fields
    replaced by their lengths), then every array field's raw bytes in header order."""
    headers, blobs = [], []
    for trajectory in trajectories:
        fields = trajectory.to_dict()
        for name, dtype in _ARRAYS.items():
            values = np.asarray(fields.pop(name), dtype)
            fields[name] = len(values)
            blobs.append(values.tobytes())
        headers.append(fields)
    head = json.dumps(headers).encode()
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def unpack_trajectories(data: bytes) -> list[Trajectory]:
    """The inverse of `pack_trajectories`."""
    size = int.from_bytes(data[:8], "little")
    headers = json.loads(data[8 : 8 + size])
    offset = 8 + size
    out = []
    for fields in headers:
        for name, dtype in _ARRAYS.items():
            count = fields[name]
            values = np.frombuffer(data, dtype, count, offset)
            offset += values.nbytes
            fields[name] = values.tolist()
        out.append(Trajectory(**fields))
    return out


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's `data`, in process order, on every process."""
    if jax.process_count() == 1:
        return [data]
    sizes = multihost_utils.process_allgather(np.array([len(data)], np.int64))
    sizes = np.asarray(sizes).reshape(-1)
    buffer = np.zeros(int(sizes.max()), np.uint8)
    buffer[: len(data)] = np.frombuffer(data, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buffer)).reshape(len(sizes), -1)
    return [gathered[i, : int(n)].tobytes() for i, n in enumerate(sizes)]


async def rollout(
    agent: Any, questions: Sequence[str], n_samples: int, seed: int, desc: str = ""
) -> list[Trajectory]:
    """`agent.rollout(questions, n_samples, seed)` split across processes: this host runs its
    `host_share` of the trajectories, then all are gathered, in (question, sample) order, on
    every host. `desc`: show this host's progress under that name (process 0 only)."""
    total = len(questions) * n_samples
    share = host_share(total) if jax.process_count() > 1 else None
    progress = Progress(total if share is None else len(share), desc,
                        enabled=bool(desc) and is_main_process())  # fmt: skip
    run = agent.rollout(questions, n_samples, seed, only=share, on_done=lambda _: progress.done())
    try:
        if share is None:
            return await run
        sampler = agent.sampler
        if isinstance(sampler, JaxSampler) and sampler.multiprocess:
            async with sampler.lockstep():
                local = await run
        else:
            local = await run
    finally:
        progress.close()
    parts = await asyncio.to_thread(allgather_bytes, pack_trajectories(local))
    gathered = [t for part in parts for t in unpack_trajectories(part)]
    return sorted(gathered, key=lambda t: (t.group_id, t.sample_index))
