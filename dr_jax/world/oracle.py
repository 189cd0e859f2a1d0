"""A scripted agent that solves world questions through the real tools, turn by turn.

It knows each question's plan (which pages hold which facts) and its gold answer, and proves
them reachable: it searches for each page's title, browses the hit, pages on while the fact is
missing, and moves on only once the fact appeared in a tool observation; if any fact cannot be
found within the turn budget it answers "unknown". Its traces, in DeepResearcher's turn
format, prove the questions answerable and serve as demonstrations for a supervised warm start.

Its reasoning is terse on purpose: every name or value a policy writes is copied from the
question or an observation, and a small policy that copies badly derails the turn format at
each copy; a demonstration writes each one only where the next step needs it.
"""

import ast
import asyncio
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dr_jax.reward import f1_score
from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.world.export import jsonl_row
from dr_jax.world.pages import INFOBOX_LABELS
from dr_jax.world.questions import Question, Read
from dr_jax.world.server import WorldServer
from dr_jax.world.world import World

# fact -> words added to the page title in the search query: the page's own infobox label
QUERY_WORDS = {fact: label.lower() for fact, label in INFOBOX_LABELS.items()}
FACT_NAMES = {  # fact -> how the oracle's reasoning names it
    "born": "birth year", "founded": "founding year", "established": "founding year",
    "released": "release year", "held": "year", "employees": "number of employees",
    "headquarters": "headquarters city", "creator": "creator", "length": "length",
}  # fmt: skip
YEAR_FACTS = frozenset({"born", "founded", "established", "released", "held"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")


@dataclass
class Demonstration:
    """One solved (or failed) question: turns are (assistant text, observation or None)."""

    question: Question
    turns: list[tuple[str, str | None]] = field(default_factory=list)
    answer: str = ""
    f1: float = 0.0
    search_ranks: list[int | None] = field(default_factory=list)  # 1-based rank per needed page

    def to_json(self) -> dict:
        """A JSONL record: the question, its gold answers, the turns, the answer and its F1."""
        return {
            **jsonl_row(self.question),
            "turns": [{"assistant": text, "observation": obs} for text, obs in self.turns],
            "answer": self.answer,
            "f1": self.f1,
            "search_ranks": self.search_ranks,
        }


def search_query(read: Read) -> str:
    return f"{read.title} {QUERY_WORDS[read.fact]}"


def _tool_turn(think: str, name: str, arguments: dict) -> str:
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<think>{think}</think>\n<tool_call>\n{call}\n</tool_call>"


def _parse(observation: str) -> object:
    try:
        return json.loads(observation)
    except ValueError:
        return ast.literal_eval(observation)  # observation_format="deepresearcher"


def _hits(observation: str) -> list[dict[str, str]]:
    """url -> snippet of each query's hits from a web_search observation (JSON or
    DeepResearcher repr)."""
    items = _parse(observation)
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        hits = item.get("results", item.get("web_page_info_list", [])) if item else []
        out.append({h["url"]: h.get("snippet", h.get("quick_summary", "")) for h in hits})
    return out


def _page_texts(observation: str) -> dict[str, tuple[str, bool]]:
    """url -> (text returned now, whether more windows remain) from a browse observation."""
    items = _parse(observation)
    out: dict[str, tuple[str, bool]] = {}
    for item in items if isinstance(items, list) else []:
        if "pages" in item:
            seen = item.get("first_page", 0) + len(item["pages"])
            out[item["url"]] = ("\n".join(item["pages"]), seen < item.get("total_pages", 0))
        elif "information" in item:
            text = "\n".join(p["page_summary"] for p in item["information"])
            out[item["url"]] = (text, False)
    return out


def evidence_sentence(text: str, value: str) -> str | None:
    """The prose sentence stating `value` as whole words (table rows only as a fallback)."""
    pattern = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")
    found = [s.strip().replace("*", "") for s in _SENTENCE_END.split(text) if pattern.search(s)]
    prose = [s for s in found if not s.lstrip().startswith("|")]
    return (prose or found or [None])[0]


def _comparison(reads: tuple[Read, ...], q: Question) -> str:
    """'1897 is earlier than 1972.' for the two values the answer was chosen between."""
    a, b = reads
    winner, other = (a, b) if a.value in q.answers or a.title in q.answers else (b, a)
    smaller = int(winner.value.replace(",", "")) < int(other.value.replace(",", ""))
    if winner.fact in YEAR_FACTS:
        relation = "earlier than" if smaller else "later than"
    else:
        relation = "smaller than" if smaller else "larger than"
    return f"{winner.value} is {relation} {other.value}, so the answer is {q.answers[0]}."


def _fact_name(fact: str) -> str:
    return FACT_NAMES.get(fact, fact)


def _note(read: Read, text: str) -> str | None:
    """What the oracle notes once `text` states the fact `read` looks for, else None."""
    if evidence_sentence(text, read.value) is None:
        return None
    return f"The {_fact_name(read.fact)} of {read.title} is {read.value}."


class _Run:
    """One question's trajectory: the turn budget, the session and the facts seen so far."""

    def __init__(
        self, q: Question, tools: ToolExecutor, base_url: str, max_turns: int, trust_snippets: bool
    ):
        self.q, self.tools, self.base_url, self.max_turns = q, tools, base_url, max_turns
        self.trust_snippets = trust_snippets
        self.session = ToolSession(question=q.question)
        self.demo = Demonstration(q)
        self.facts: list[str] = []

    def turns_left(self) -> int:
        return self.max_turns - len(self.demo.turns)

    async def call(self, think: str, name: str, arguments: dict) -> str:
        text = _tool_turn(think, name, arguments)
        observation = await self.tools.execute(ToolCall(name, arguments), self.session)
        self.demo.turns.append((text, observation))
        return observation

    async def read_round(self, reads: tuple[Read, ...], opening: str) -> bool:
        """Search for the round's pages, browse them, page on until every fact is seen (with
        `trust_snippets`, facts every hit's snippet already states are taken from there)."""
        if self.turns_left() < 3:  # a search, a browse and the answer
            return False
        queries = [search_query(r) for r in reads]
        observation = await self.call(opening, "web_search", {"query": queries})
        urls = {r.path: self.base_url + r.path for r in reads}
        hits = _hits(observation)
        for r, found in zip(reads, hits + [{}] * (len(reads) - len(hits)), strict=False):
            rank = list(found).index(urls[r.path]) + 1 if urls[r.path] in found else None
            self.demo.search_ranks.append(rank)
        if any(rank is None for rank in self.demo.search_ranks[-len(reads) :]):
            return False
        if self.trust_snippets:
            notes = [_note(r, found[urls[r.path]]) for r, found in zip(reads, hits, strict=False)]
            if all(notes):
                self.facts.extend(notes)
                return True
        pending = list(reads)
        think = "I will read the pages." if len(reads) > 1 else "I will read the page."
        while pending and self.turns_left() > 1:
            observation = await self.call(
                think, "browse_webpage", {"url_list": [urls[r.path] for r in pending]}
            )
            texts = _page_texts(observation)
            more, notes = [], []
            for r in pending:
                text, has_more = texts.get(urls[r.path], ("", False))
                if note := _note(r, text):
                    notes.append(note)
                elif has_more:
                    more.append(r)
                else:
                    return False
            self.facts.extend(notes)
            pending = more
            if pending:
                think = " ".join([*notes, "I will read on."])
        return not pending

    async def solve(self) -> Demonstration:
        q, demo = self.q, self.demo
        opening = f"I need {self._needs(q.plan[0])}."
        solved = True
        for i, reads in enumerate(q.plan):
            if i:
                opening = " ".join(
                    [*self.facts[-len(q.plan[i - 1]) :], f"Next I need {self._needs(reads)}."]
                )
            if not await self.read_round(reads, opening):
                solved = False
                break
        demo.answer = q.answers[0] if solved else "unknown"
        if not solved:
            think = "I could not find the facts I need."
        elif len(q.plan[-1]) > 1:
            think = " ".join([*self.facts[-len(q.plan[-1]) :], _comparison(q.plan[-1], q)])
        else:
            think = " ".join(self.facts[-1:])
        demo.turns.append((f"<think>{think}</think>\n<answer>{demo.answer}</answer>", None))
        demo.f1 = f1_score(demo.answer, q.answers)
        return demo

    @staticmethod
    def _needs(reads: tuple[Read, ...]) -> str:
        return " and ".join(f"the {_fact_name(r.fact)} of {r.title}" for r in reads)


async def solve(
    question: Question,
    tools: ToolExecutor,
    base_url: str,
    max_turns: int = 10,
    *,
    trust_snippets: bool = False,
) -> Demonstration:
    """Solve one question with `tools` against the world served at `base_url`. By default
    every fact is read on its page (proving the pages readable); `trust_snippets` answers from
    search snippets that state the facts, as a quick researcher would (shorter traces)."""
    return await _Run(question, tools, base_url, max_turns, trust_snippets).solve()


async def demonstrate_async(
    world: World,
    questions: list[Question],
    tools_config: ToolsConfig | None = None,
    max_turns: int = 10,
    concurrency: int = 16,
    trust_snippets: bool = False,
) -> list[Demonstration]:
    """Serve `world` on loopback and solve `questions` concurrently with the real tools.

    Without `tools_config`, pages are extracted in a thread (world pages are small, and a
    process pool would cost seconds to start).
    """
    with WorldServer(world) as server:
        config = (tools_config or ToolsConfig(extract_workers=0)).replace(
            search_backend="world",
            search_url=server.url,
            reader="none",
            allow_hosts=(urlsplit(server.url).netloc,),
        )
        limit = asyncio.Semaphore(concurrency)
        async with ToolExecutor(config) as tools:

            async def one(q: Question) -> Demonstration:
                async with limit:
                    return await solve(
                        q, tools, server.url, max_turns, trust_snippets=trust_snippets
                    )

            return await asyncio.gather(*(one(q) for q in questions))


def demonstrate(world: World, questions: list[Question], **kwargs) -> list[Demonstration]:
    """Synchronous `demonstrate_async` (for scripts and tests)."""
    return asyncio.run(demonstrate_async(world, questions, **kwargs))
