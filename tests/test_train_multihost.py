"""Multi-host GRPO: two `jax.distributed` processes on loopback train like one process.

The split itself (`host_share`, the trajectory wire format) is checked in-process; the slow
test runs `train` (warm start + 2 GRPO steps of the e2e test's tiny config, mesh 2x2) as
2 processes x 2 CPU devices and as 1 process x 4 CPU devices, and compares them.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dr_jax.data import DataIterator
from dr_jax.rollout.trajectory import Trajectory
from dr_jax.train.config import DataConfig
from dr_jax.train.metrics import MetricsConfig, MetricsWriter, read_jsonl
from dr_jax.train.multihost import host_share, pack_trajectories, unpack_trajectories
from dr_jax.train.run import load_questions
from dr_jax.world import World, WorldServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("total, count", [(8, 2), (7, 3), (2, 4), (0, 2), (5, 1)])
def test_host_shares_are_contiguous_and_cover_every_trajectory_once(total, count):
    shares = [host_share(total, i, count) for i in range(count)]
    assert [k for share in shares for k in share] == list(range(total))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_trajectories_survive_the_wire_format_exactly():
    """Log-probs travel as float32, the precision of the training arrays (and of JaxSampler)."""
    first = Trajectory("q? é", 3, 1, [1, 151644, 7], text="<think>x</think>", answer="Paris")
    first.append([5, 6], [-0.25, float(np.float32(-1.5e-7))])
    first.append([9], None)
    first.timings = {"sampling": 0.5, "tools": 0.25, "total": 1.0}
    first.num_turns, first.finish_reason = 2, "answer"
    first.messages = [{"role": "tool", "name": "web_search", "content": "[]"}]
    empty = Trajectory("", 0, 0, [])
    back = unpack_trajectories(pack_trajectories([first, empty]))
    assert back == [first, empty]
    assert unpack_trajectories(pack_trajectories([])) == []


def test_a_disabled_metrics_writer_writes_nothing(tmp_path):
    """What the processes other than 0 use: the same calls, no files."""
    writer = MetricsWriter(tmp_path / "run", MetricsConfig(), total_steps=2, enabled=False)
    writer.log(1, {"train/reward": 0.5})
    assert writer.dump_samples(1, [{"question": "q", "text": "t"}]) is None
    writer.advance()
    writer.close()
    assert not (tmp_path / "run").exists()


CHILD = """
import asyncio, json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import jax
from test_train_e2e import tiny_config
from dr_jax.train.optim import OptimConfig
from dr_jax.train.run import train

config = tiny_config(Path(sys.argv[1]), mesh="2x2")
tools = config.tools.replace(search_url=sys.argv[2], allow_hosts=(sys.argv[2].split("//")[1],))
# update ~ gradient (eps >> sqrt(v)): parameters then compare gradients, not Adam's sign(g)
optim = OptimConfig(lr=1.0, eps=1.0, weight_decay=0.0)
config = config.replace(tools=tools, optim=optim)
record = asyncio.run(train(config))
print("RECORD" + json.dumps([jax.process_index(), jax.process_count(), record]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    run_dir: Path, url: str, devices: int, child: str = CHILD, **env: str
) -> subprocess.Popen:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **env,
    )
    code = child.format(tests=str(ROOT / "tests"))
    return subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _record(proc: subprocess.Popen) -> list:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    line = next(x for x in out.splitlines() if x.startswith("RECORD"))
    return json.loads(line.removeprefix("RECORD"))


def _untimed(record: dict) -> dict:
    """A record without what each host measures for itself: wall clocks, and its own tool
    executor's counts and latencies (it runs its share of the trajectories' tool calls)."""
    return {k: v for k, v in record.items() if not k.startswith(("time/", "perf/", "tools/"))}


def _final_params(run_dir: Path) -> dict[str, np.ndarray]:
    """The last checkpoint's parameters as host arrays, keyed by path."""
    import jax
    import orbax.checkpoint as ocp

    step_dir = max((run_dir / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
    with ocp.PyTreeCheckpointer() as checkpointer:
        meta = checkpointer.metadata(step_dir / "state").item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        state = checkpointer.restore(step_dir / "state", restore_args=restore_args)
    leaves = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


@pytest.mark.slow  # three fresh JAX processes, each compiling sampler and learner (minutes)
def test_two_processes_train_like_one_process_and_only_process_0_writes(tmp_path):
    """Both runs execute the same SPMD programs on the same 2x2 mesh (4 devices), against one
    world server (its port is in every observation); only where the devices live differs.
    Rollout seeds follow each trajectory's (question, sample), not the host that runs it, so
    both runs sample the same tokens: counts, rewards and question ids must be equal.

    Tolerance: the losses agree to the last bit or nearly (grad norms ~4e-6 differed by at most
    3e-6 relative), but the gradients are not bit-identical, and plain AdamW turns such noise
    into +-lr per element (its first update is ~lr * sign(g); with lr 1e-3 the parameters
    differed by 1e-3). So the run uses eps = 1 >> sqrt(v), lr = 1, no weight decay: each
    update is ~ the gradient itself and the parameters differ by 1-2 float32 ulps of the
    gradient's scale (seen: <= 1.7e-8, on values ~0.08 and once on one ~2e-4), compared at
    rtol 1e-5 / atol 5e-8 (a few ulps at 0.1); loss terms at rtol 1e-4."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    with WorldServer(World.generate(0, "tiny")) as world:  # one port in every observation
        one = _start(one_dir, world.url, 4)
        port = str(_free_port())
        hosts = [
            _start(
                two_dir,
                world.url,
                2,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(pid),
            )
            for pid in (0, 1)
        ]
        [_, count_one, single] = _record(one)
        outputs = [_record(p) for p in hosts]
    assert count_one == 1 and [o[:2] for o in outputs] == [[0, 2], [1, 2]]
    host0, host1 = (_untimed(o[2]) for o in outputs)
    assert host0 == host1, "every host computes the same step record (its own timings aside)"
    multi = outputs[0][2]

    for key in ("data/question_ids", "train/trajectories", "train/sampled_tokens",
                "train/response_tokens_mean", "train/tool_calls_mean", "train/reward",
                "val/reward", "val/response_tokens_mean"):  # fmt: skip
        assert multi[key] == single[key], key
    for key in ("loss/loss", "loss/pg_loss", "loss/kl_loss", "loss/entropy", "loss/grad_norm"):
        assert multi[key] == pytest.approx(single[key], rel=1e-4, abs=1e-9), key

    ours, theirs = _final_params(two_dir), _final_params(one_dir)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_allclose(value, theirs[name], rtol=1e-5, atol=5e-8, err_msg=name)

    # one writer: each record once, the warm start once, the samples of each step
    records = read_jsonl(two_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert len([r for r in read_jsonl(two_dir / "sft" / "metrics.jsonl") if "time/sft" in r]) == 1
    assert (two_dir / "warm_start" / "config.json").is_file()
    assert sorted(p.name for p in (two_dir / "samples").iterdir()) == [
        "step_000001.jsonl",
        "step_000002.jsonl",
    ]


SGLANG_CHILD = """
import asyncio, dataclasses, json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import jax
from test_train_e2e import tiny_config
from dr_jax.config import SamplerConfig, SGLangConfig
from dr_jax.train.run import train

config = tiny_config(Path(sys.argv[1]), mesh="2x2")
engines = SGLangConfig(engines=(sys.argv[2],))
sampler = SamplerConfig(kind="sglang", sglang=engines, max_new_tokens=8)
config = config.replace(sampler=sampler, sft=config.sft.__class__(steps=0))
asyncio.run(train(config))
longer = config.replace(grpo=dataclasses.replace(config.grpo, steps=3))
record = asyncio.run(train(longer))  # resumes from step 2
print("RECORD" + json.dumps([jax.process_index(), jax.process_count(), record]))
"""


@pytest.mark.slow  # two fresh JAX processes compiling the learner (~2-3 min on 2 cores)
def test_two_processes_share_one_sglang_server_push_weights_once_and_resume(tmp_path):
    """Disaggregated mode on 2 processes against the loopback SGLang stand-in, 2 steps then
    the same run resumed for a third: every trajectory is requested once (by the host that
    owns it); each weight sync (start, each step, the resume's start) is one write by
    process 0 and one /update_weights_from_disk; the resumed step takes the next questions."""
    from sglang_standin import StandIn

    from dr_jax.config import PolicyConfig
    from dr_jax.models import save_pretrained
    from dr_jax.runtime import build_policy

    served = save_pretrained(build_policy(PolicyConfig()), tmp_path / "served")  # the start
    with StandIn(served) as server:
        port = str(_free_port())
        hosts = [
            _start(
                tmp_path,
                server.url,
                2,
                child=SGLANG_CHILD,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(pid),
            )
            for pid in (0, 1)
        ]
        outputs = [_record(p) for p in hosts]
    assert _untimed(outputs[0][2]) == _untimed(outputs[1][2])
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    train_examples, _ = load_questions(DataConfig(world_size="tiny", data_sources=("world_1hop",)),
                                       World.generate(0, "tiny"))  # fmt: skip
    expected = DataIterator(train_examples, 2, seed=0)
    for record in records:
        assert record["data/question_ids"] == [e.id for e in expected.next_batch()]
    generated = [path for path, _ in server.log if path == "/generate"]
    trajectories = sum(r["train/trajectories"] + r.get("val/trajectories", 0) for r in records)
    assert {r["train/turns_mean"] for r in records} == {1.0}, "a stand-in turn ends a trajectory"
    assert len(generated) == trajectories == 3 * 4 + 2 * 2
    updates = [body for path, body in server.log if path == "/update_weights_from_disk"]
    assert [u["weight_version"] for u in updates] == ["0", "1", "2", "2", "3"]
    assert (tmp_path / "weights" / "config.json").is_file()
