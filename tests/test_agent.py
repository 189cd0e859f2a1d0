"""The agent loop: token-in/token-out, masks, stopping rules and robustness.

The policy is played by `ScriptedSampler`, which emits the real tokenizer's ids of scripted
turns (as a trained policy would) plus <|im_end|>; tools are the real ToolExecutor over the
offline world served on loopback. The real JAX sampler on a tiny model is in
test_agent_jax.py.
"""

import asyncio
import json
import random
import re
import threading
from collections.abc import Callable, Sequence

import pytest

from dr_jax.rollout import (
    Agent,
    AgentConfig,
    SampleResult,
    SamplingParams,
    Trajectory,
    rollout_metrics,
)
from dr_jax.rollout.prompts import PromptTemplate, default_prompt
from dr_jax.runtime import start_world_tools
from dr_jax.tools import ToolsConfig
from dr_jax.world import World

TODAY = "2026-01-02"
TOOLS = ToolsConfig(extract_workers=0, window_chars=1500, page_budget=1, top_k=3, retries=0)


def search(*queries: str) -> str:
    call = {"name": "web_search", "arguments": {"query": list(queries)}}
    return f"\nI should search.\n</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def browse(*urls: str) -> str:
    call = {"name": "browse_webpage", "arguments": {"url_list": list(urls)}}
    return f"\nLet me read it.\n</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def answer(text: str) -> str:
    return f"\nI know it now.\n</think>\n<answer>{text}</answer>"


class ScriptedSampler:
    """A `Sampler` whose turn k is `script(question, k, context text)`, tokenized for real.

    Log-probs are -0.01 * (position in the turn + 1), so the test can tell them apart; an
    optional random delay (seeded by the request) stands in for decode time.
    """

    def __init__(
        self,
        tokenizer,
        script: Callable[[str, int, str], str],
        max_delay: float = 0.0,
        fail_on: Callable[[str, int], bool] = lambda q, k: False,
    ) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.max_delay = max_delay
        self.fail_on = fail_on
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.turns: list[str] = []  # every emitted turn text, in order

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[SampleResult]:
        if self.max_delay:
            await asyncio.sleep(random.Random(params.seed).uniform(0, self.max_delay))
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(list(prompt))
            question = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            # <|im_start|> opens the system, user and assistant turns, then tool + assistant
            turn = (list(prompt).count(self.start) - 3) // 2
            if self.fail_on(question, turn):
                raise RuntimeError(f"sampler down for {question!r}")
            turn_text = self.script(question, turn, text)
            self.turns.append(turn_text)
            ids = self.tokenizer.encode(turn_text, add_special_tokens=False)
            ids = [*ids, self.end][: params.max_new_tokens]
            reason = "stop" if ids[-1] == self.end else "length"
            out.append(SampleResult(ids, [-0.01 * (i + 1) for i in range(len(ids))], reason))
        return out


class RecordingTools:
    """The real executor, keeping each observation text it returned (in call order)."""

    def __init__(self, tools) -> None:
        self.tools = tools
        self.observations: list[str] = []

    async def execute(self, call, session) -> str:
        text = await self.tools.execute(call, session)
        self.observations.append(text)
        return text


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(seed=0, size="tiny")


def run_agent(tokenizer, world, sampler, questions, n_samples=1, seed=0, wrap=None, **config):
    """Rolls out with the real tools over `world` on loopback; returns (trajectories, tools)."""

    async def main():
        async with start_world_tools(TOOLS, world=world) as executor:
            tools = (wrap or RecordingTools)(executor)
            agent = Agent(sampler, tokenizer, tools, AgentConfig(today=TODAY, **config))
            trajs = await asyncio.wait_for(agent.rollout(questions, n_samples, seed), 120)
            return trajs, tools

    return asyncio.run(main())


def test_tito_response_is_sampled_ids_plus_rendered_observations(qwen_tokenizer, world):
    question = world.questions[0]

    def script(q: str, k: int, context: str) -> str:
        if k == 0:
            return search(q)
        if k == 1:  # the first result URL of the search
            return browse(re.search(r"http://127\.0\.0\.1:\d+/wiki/[^\"']+", context)[0])
        return answer("Rocev")

    sampler = ScriptedSampler(qwen_tokenizer, script)
    [traj], tools = run_agent(qwen_tokenizer, world, sampler, [question.question])
    template = default_prompt()

    assert traj.finish_reason == "answer" and traj.answer == "Rocev"
    assert (traj.num_turns, traj.num_tool_calls) == (3, 2)
    # The decoded tokens are the chat template's rendering of the conversation.
    messages = template.messages(question.question, TODAY)
    for k in range(3):
        messages.append({"role": "assistant", "content": "<think>" + sampler.turns[k]})
        if k < 2:
            messages.append({"role": "tool", "content": tools.observations[k]})
    expected = template.render(qwen_tokenizer, messages, add_generation_prompt=False)
    decoded = qwen_tokenizer.decode(traj.prompt_ids + traj.response_ids)
    assert decoded == expected.removesuffix("\n")
    # Mask 1 on exactly the sampled ids (closing <|im_end|> included), with their log-probs.
    sampled = [[*qwen_tokenizer.encode(text), sampler.end] for text in sampler.turns]
    observations = [template.observation_ids(qwen_tokenizer, o) for o in tools.observations]
    expected_ids, expected_mask, expected_logprobs = [], [], []
    for k, ids in enumerate(sampled):
        expected_ids += ids
        expected_mask += [1] * len(ids)
        expected_logprobs += [-0.01 * (i + 1) for i in range(len(ids))]
        if k < 2:
            expected_ids += observations[k]
            expected_mask += [0] * len(observations[k])
            expected_logprobs += [0.0] * len(observations[k])
    assert traj.response_ids == expected_ids
    assert traj.loss_mask == expected_mask
    assert traj.sampler_logprobs == pytest.approx(expected_logprobs)
    assert traj.text == "<think>" + qwen_tokenizer.decode(traj.response_ids)


def test_search_results_reach_the_model_as_observations(qwen_tokenizer, world):
    question = world.questions[0]
    script = {0: search(question.question), 1: answer("x")}
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: script[k])
    [traj], tools = run_agent(qwen_tokenizer, world, sampler, [question.question])
    assert question.evidence[0] in tools.observations[0]
    assert "<tool_response>" in traj.text and question.evidence[0] in traj.text


def test_failing_tool_becomes_an_observation_and_the_rollout_goes_on(qwen_tokenizer, world):
    script = {0: browse("http://127.0.0.1:1/unreachable.html"), 1: answer("still here")}
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: script[k])
    [traj], tools = run_agent(qwen_tokenizer, world, sampler, ["q?"])
    assert "error" in tools.observations[0]
    assert traj.finish_reason == "answer" and traj.answer == "still here"


def test_raising_tool_object_is_reported_to_the_model(qwen_tokenizer, world):
    class Broken:
        def __init__(self, executor) -> None:
            pass

        async def execute(self, call, session) -> str:
            raise OSError("disk on fire")

    script = {0: search("a"), 1: answer("b")}
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: script[k])
    [traj], _ = run_agent(qwen_tokenizer, world, sampler, ["q?"], wrap=Broken)
    assert traj.finish_reason == "answer"
    assert "web_search failed: OSError: disk on fire" in traj.text


def test_format_error_stops_the_trajectory(qwen_tokenizer, world):
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: "\nno tags here")
    [traj], _ = run_agent(qwen_tokenizer, world, sampler, ["q?"])
    assert traj.finish_reason == "format_error" and traj.answer is None
    assert traj.num_turns == 1 and traj.num_tool_calls == 0
    assert "neither" in traj.error


def test_max_turns_ends_with_the_last_tool_call_unexecuted(qwen_tokenizer, world):
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: search(f"query {k}"))
    [traj], tools = run_agent(qwen_tokenizer, world, sampler, ["q?"], max_turns=3)
    assert traj.finish_reason == "max_turns"
    assert (traj.num_turns, traj.num_tool_calls, len(tools.observations)) == (3, 2, 2)
    assert traj.response_ids[-1] == sampler.end and traj.loss_mask[-1] == 1


def test_context_budget_caps_the_conversation(qwen_tokenizer, world):
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: search(f"query {k}"))
    budget = len(default_prompt().prompt_ids(qwen_tokenizer, "q?", TODAY)) + 120
    [traj], _ = run_agent(qwen_tokenizer, world, sampler, ["q?"], max_context_tokens=budget)
    assert traj.finish_reason == "context_budget"
    assert traj.num_tokens <= budget


def test_truncated_turn_finishes_with_length(qwen_tokenizer, world):
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: answer("a long answer " * 20))
    sampling = SamplingParams(max_new_tokens=10)
    [traj], _ = run_agent(qwen_tokenizer, world, sampler, ["q?"], sampling=sampling)
    assert traj.finish_reason == "length" and len(traj.response_ids) == 10


def test_tool_call_cut_before_its_end_token_gets_an_unsampled_end_token(qwen_tokenizer, world):
    call = search("a")
    cut = len(qwen_tokenizer.encode(call))  # max_new_tokens stops right after </tool_call>
    script = {0: call, 1: answer("b")}
    sampler = ScriptedSampler(qwen_tokenizer, lambda q, k, c: script[k])
    sampling = SamplingParams(max_new_tokens=cut)
    [traj], tools = run_agent(qwen_tokenizer, world, sampler, ["q?"], sampling=sampling)
    assert traj.answer == "b" and traj.num_tool_calls == 1
    assert traj.response_ids[cut] == sampler.end and traj.loss_mask[cut - 1 : cut + 2] == [1, 0, 0]
    template = default_prompt()
    messages = [
        *template.messages("q?", TODAY),
        {"role": "assistant", "content": "<think>" + call},
        {"role": "tool", "content": tools.observations[0]},
        {"role": "assistant", "content": "<think>" + script[1]},
    ]
    expected = template.render(qwen_tokenizer, messages, add_generation_prompt=False)
    decoded = qwen_tokenizer.decode(traj.prompt_ids + traj.response_ids)
    assert decoded == expected.removesuffix("\n")


def test_sampler_error_ends_only_that_trajectory(qwen_tokenizer, world):
    script = {0: search("a"), 1: answer("ok")}
    sampler = ScriptedSampler(
        qwen_tokenizer, lambda q, k, c: script[k], fail_on=lambda q, k: q == "bad" and k == 1
    )
    trajs, _ = run_agent(qwen_tokenizer, world, sampler, ["good", "bad", "fine"], n_samples=2)
    reasons = [(t.question, t.finish_reason) for t in trajs]
    assert reasons == [
        ("good", "answer"),
        ("good", "answer"),
        ("bad", "sampler_error"),
        ("bad", "sampler_error"),
        ("fine", "answer"),
        ("fine", "answer"),
    ]
    bad = trajs[2]
    assert "sampler down" in bad.error and bad.num_turns == 1 and bad.num_tool_calls == 1
    assert [t.group_id for t in trajs] == [0, 0, 1, 1, 2, 2]


def test_hundreds_of_concurrent_trajectories_with_random_latency_finish(qwen_tokenizer, world):
    """300 trajectories, 0-3 tool calls each, random sampler and tool latency: no deadlock."""

    class Slow(RecordingTools):
        async def execute(self, call, session) -> str:
            await asyncio.sleep(random.uniform(0, 0.05))
            return await super().execute(call, session)

    def script(q: str, k: int, context: str) -> str:
        return answer(q) if k >= int(q[1:]) % 4 else search(f"{q} part {k}")

    questions = [f"q{i}" for i in range(100)]
    sampler = ScriptedSampler(qwen_tokenizer, script, max_delay=0.02)
    trajs, tools = run_agent(qwen_tokenizer, world, sampler, questions, n_samples=3, wrap=Slow)
    assert len(trajs) == 300
    assert all(t.finish_reason == "answer" and t.answer == t.question for t in trajs)
    assert [t.num_tool_calls for t in trajs] == [int(q[1:]) % 4 for q in questions for _ in "abc"]
    assert len(tools.observations) == sum(t.num_tool_calls for t in trajs)
    metrics = rollout_metrics(trajs)
    assert metrics["rollout/finish/answer"] == 1.0
    assert metrics["rollout/tool_calls_mean"] == pytest.approx(1.5)
    assert metrics["rollout/sampled_tokens"] == sum(sum(t.loss_mask) for t in trajs)


def test_rollout_metrics_summarise_finish_reasons_and_time(qwen_tokenizer):
    trajs = [
        Trajectory("q", 0, 0, [1, 2], [3, 4, 5], [1, 0, 1], [-1.0, 0.0, -1.0], answer="a",
                   finish_reason="answer", num_turns=2, num_tool_calls=1,
                   timings={"sampling": 3.0, "tools": 1.0, "total": 4.0}),
        Trajectory("q", 0, 1, [1, 2], [3], [1], [-1.0], finish_reason="format_error",
                   num_turns=1, timings={"sampling": 1.0, "tools": 0.0, "total": 4.0}),
    ]  # fmt: skip
    m = rollout_metrics(trajs)
    assert m["rollout/finish/format_error"] == 0.5 and "rollout/format_error_rate" not in m
    assert m["rollout/finish/answer"] == 0.5 and m["rollout/answer_rate"] == 0.5
    assert m["rollout/turns_mean"] == 1.5 and m["rollout/sampled_tokens"] == 3
    assert m["rollout/sampling_time_share"] == 0.5 and m["rollout/tools_time_share"] == 0.125


class ThreadRecordingTemplate(PromptTemplate):
    """The default prompt, noting the thread and the length of each observation it renders."""

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "rendered", [])

    def observation_ids(self, tokenizer, observation: str) -> list[int]:
        self.rendered.append((threading.current_thread(), len(observation)))
        return super().observation_ids(tokenizer, observation)


class HugePage:
    """Tools whose every observation is a million characters."""

    async def execute(self, call, session) -> str:
        return "word " * 200_000


def _huge_rollout(tokenizer, **config) -> tuple[Trajectory, threading.Thread, list]:
    """One trajectory that searches once (a million-character observation), then answers:
    (it, the event loop's thread, (thread, length) of each observation tokenized)."""
    template = ThreadRecordingTemplate()
    script = {0: search("a"), 1: answer("b")}
    sampler = ScriptedSampler(tokenizer, lambda q, k, c: script[k])

    async def main():
        agent = Agent(sampler, tokenizer, HugePage(), AgentConfig(today=TODAY, **config), template)
        return await agent.rollout(["q?"]), threading.current_thread()

    [traj], loop_thread = asyncio.run(main())
    return traj, loop_thread, template.rendered


def test_a_long_observation_is_cut_then_tokenized_off_the_event_loop(qwen_tokenizer):
    traj, loop_thread, rendered = _huge_rollout(qwen_tokenizer, max_observation_chars=1000)
    [(thread, chars)] = rendered
    assert thread is not loop_thread and chars == 1000 + len("\n[cut: 999,000 more characters]")
    assert traj.messages[-2]["content"].endswith("word \n[cut: 999,000 more characters]")
    assert traj.finish_reason == "answer"


def test_by_default_an_observation_is_cut_at_8_characters_a_token_of_the_context(qwen_tokenizer):
    traj, _, [(_, chars)] = _huge_rollout(qwen_tokenizer, max_context_tokens=2000)
    assert chars == 16_000 + len("\n[cut: 984,000 more characters]")
    assert traj.finish_reason == "context_budget"  # 16,000 characters of "word " do not fit
