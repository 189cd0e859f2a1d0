"""Summary statistics of a batch of trajectories, for the training log."""

from collections import Counter
from collections.abc import Sequence

import numpy as np

from dr_jax.rollout.trajectory import Trajectory


def rollout_metrics(trajectories: Sequence[Trajectory], prefix: str = "rollout/") -> dict:
    """Means of turns, tool calls and tokens; finish-reason fractions (`finish/format_error`:
    the rollout stopped at an unparsable turn; `format_error_rate` is the scorer's, in the
    reward metrics); the share of trajectory time spent awaiting the sampler vs the tools (they
    overlap across trajectories, so these are per-trajectory shares, not wall-clock)."""
    if not trajectories:
        return {}
    n = len(trajectories)
    reasons = Counter(t.finish_reason for t in trajectories)
    sampling = sum(t.timings.get("sampling", 0.0) for t in trajectories)
    tools = sum(t.timings.get("tools", 0.0) for t in trajectories)
    total = sum(t.timings.get("total", 0.0) for t in trajectories)
    response = np.array([len(t.response_ids) for t in trajectories])
    out = {
        "trajectories": n,
        "turns_mean": float(np.mean([t.num_turns for t in trajectories])),
        "tool_calls_mean": float(np.mean([t.num_tool_calls for t in trajectories])),
        "prompt_tokens_mean": float(np.mean([len(t.prompt_ids) for t in trajectories])),
        "response_tokens_mean": float(response.mean()),
        "response_tokens_max": int(response.max()),
        "sampled_tokens": int(sum(t.num_sampled for t in trajectories)),
        "answer_rate": sum(t.answer is not None for t in trajectories) / n,
        "sampling_time_share": sampling / total if total > 0 else 0.0,
        "tools_time_share": tools / total if total > 0 else 0.0,
    }
    out.update({f"finish/{reason}": count / n for reason, count in sorted(reasons.items())})
    return {prefix + key: value for key, value in out.items()}
