"""Questions over the world: 1-hop lookups, 2/3/4-hop bridge chains, 2/4-hop comparisons.

A bridge question walks functional relations (organisation -> founder -> birthplace -> ...)
and asks for an attribute or relation of the last entity, so it has exactly one answer and
needs one page per entity on the path. A comparison question needs the same fact on two
(2-hop) or two bridged (4-hop) entities. The answer never appears in the question text.
"""

import random
import string
from dataclasses import dataclass, field

from dr_jax.world.generator import ATTRIBUTES, RELATIONS, Entity
from dr_jax.world.pages import format_value


@dataclass(frozen=True)
class Read:
    """One fact the solver must read: `value` as printed on the page at `path` (title `title`)."""

    path: str
    title: str
    fact: str
    value: str


@dataclass(frozen=True)
class Question:
    """A question with gold aliases; `plan` lists the pages to read, round by round."""

    id: str
    question: str
    answers: list[str]
    data_source: str
    split: str
    hops: int
    evidence: list[str]
    plan: tuple[tuple[Read, ...], ...] = field(default=(), repr=False)


KIND_MIX = {  # data_source -> share of all questions
    "world_1hop": 0.25,
    "world_2hop_bridge": 0.2,
    "world_3hop_bridge": 0.15,
    "world_4hop_bridge": 0.1,
    "world_2hop_comparison": 0.15,
    "world_4hop_comparison": 0.15,
}

_WORK_WORDS = {  # work type -> (creator noun phrase, publisher noun phrase, creator q, publisher q)
    "novel": ("the author of {x}", "the publisher of {x}", "Who wrote {x}?",
              "Which company published {x}?"),
    "film": ("the director of {x}", "the studio that produced {x}", "Who directed {x}?",
             "Which studio produced {x}?"),
    "album": ("the artist behind {x}", "the label that released {x}", "Who recorded {x}?",
              "On which label was {x} released?"),
}  # fmt: skip
REL_NP = {
    "birthplace": "the birthplace of {x}",
    "employer": "the employer of {x}",
    "mayor": "the mayor of {x}",
    "founder": "the founder of {x}",
    "headquarters": "the headquarters city of {x}",
    "location": "the host city of {x}",
    "organiser": "the organiser of {x}",
}
REL_Q = {
    "birthplace": "In which city was {x} born?",
    "employer": "Which organisation employed {x}?",
    "mayor": "Who is the mayor of {x}?",
    "founder": "Who founded {x}?",
    "headquarters": "In which city is {x} headquartered?",
    "location": "In which city was {x} held?",
    "organiser": "Which organisation organised {x}?",
}
ATTR_Q = {
    "born": "In what year was {x} born?",
    "occupation": "What was the occupation of {x}?",
    "founded": "In what year was {x} founded?",
    "population": "What is the population of {x}?",
    "elevation": "At what elevation, in metres, does {x} lie?",
    "country": "In which country is {x}?",
    "established": "In what year was {x} founded?",
    "employees": "How many people does {x} employ?",
    "industry": "In which industry does {x} operate?",
    "held": "In what year was {x} held?",
    "attendance": "How many people attended {x}?",
}
_WORK_ATTR_Q = {
    "novel": {"released": "In what year was {x} first published?",
              "length": "How many pages long is {x}?"},
    "film": {"released": "In what year was {x} released?",
             "length": "How many minutes long is {x}?"},
    "album": {"released": "In what year was {x} released?",
              "length": "How many minutes long is {x}?"},
}  # fmt: skip
# attribute -> (question template, pick: min or max); answer is the winning value
COMPARE_VALUE = {
    "born": ("In what year was the elder of {a} and {b} born?", min),
    "founded": ("In what year was the older of the cities {a} and {b} founded?", min),
    "population": ("What is the population of the more populous of {a} and {b}?", max),
    "established": ("In what year was the older of {a} and {b} founded?", min),
    "employees": ("How many employees does the larger of {a} and {b} have?", max),
    "attendance": ("How many people attended the better attended of {a} and {b}?", max),
}
# target kind -> (attribute, question template, pick); answer is the winning entity's name
COMPARE_NAME = {
    "person": ("born", "Who was born first, {a} or {b}?", min),
    "city": ("population", "Which city is more populous, {a} or {b}?", max),
    "organisation": ("established", "Which was founded earlier, {a} or {b}?", min),
}


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, collapsed whitespace (the reward's word view)."""
    text = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return " ".join(text.split())


def contains_words(haystack: str, needle: str) -> bool:
    """Whether `needle` occurs in `haystack` as whole words after normalisation."""
    return f" {normalize(needle)} " in f" {normalize(haystack)} "


class QuestionFactory:
    """Draws questions of each kind from the entity graph with one seeded RNG."""

    def __init__(self, entities: list[Entity], seed: int) -> None:
        self.entities = entities
        self.rng = random.Random(f"dr_jax.world:{seed}:questions")
        self.by_kind: dict[str, list[Entity]] = {}
        self.lookalike: dict[int, Entity] = {}
        for e in entities:
            self.by_kind.setdefault(e.kind, []).append(e)
            if e.twin is not None:
                self.lookalike[e.twin] = e
                self.lookalike[e.id] = entities[e.twin]

    # -- phrasing -------------------------------------------------------------------------
    def mention(self, e: Entity) -> str:
        return f"the {e.subtype} {e.name}" if e.kind == "work" else e.name

    def rel_np(self, rel: str, source: Entity, x: str) -> str:
        if rel in ("creator", "publisher"):
            return _WORK_WORDS[source.subtype][0 if rel == "creator" else 1].format(x=x)
        return REL_NP[rel].format(x=x)

    def final_question(self, fact: str, e: Entity, x: str) -> str:
        if fact in ("creator", "publisher"):
            return _WORK_WORDS[e.subtype][2 if fact == "creator" else 3].format(x=x)
        if fact in REL_Q:
            return REL_Q[fact].format(x=x)
        if e.kind == "work":
            return _WORK_ATTR_Q[e.subtype][fact].format(x=x)
        return ATTR_Q[fact].format(x=x)

    def value(self, e: Entity, fact: str) -> str:
        if fact in e.rels:
            return self.entities[e.rels[fact]].name
        return format_value(fact, e.attrs[fact])

    def aliases(self, e: Entity, fact: str) -> list[str]:
        shown = self.value(e, fact)
        out = [shown]
        if fact in e.attrs and isinstance(e.attrs[fact], int):
            out.append(str(e.attrs[fact]))
            if fact == "elevation":
                out.append(f"{e.attrs[fact]} metres")
            if fact == "length":
                out.append(f"{e.attrs[fact]} {'pages' if e.subtype == 'novel' else 'minutes'}")
        return list(dict.fromkeys(out))

    def read(self, e: Entity, fact: str) -> Read:
        return Read(e.path, e.name, fact, self.value(e, fact))

    # -- kinds ----------------------------------------------------------------------------
    def bridge(self, hops: int) -> tuple[str, list[str], tuple[tuple[Read, ...], ...]] | None:
        """Walk hops-1 relations from a random start, then ask a fact of the last entity."""
        rng = self.rng
        path = [rng.choice(self.entities)]
        rels: list[str] = []
        for _ in range(hops - 1):
            options = sorted(r for r in path[-1].rels)
            rng.shuffle(options)
            step = next((r for r in options if self.entities[path[-1].rels[r]] not in path), None)
            if step is None:
                return None
            rels.append(step)
            path.append(self.entities[path[-1].rels[step]])
        last = path[-1]
        facts = sorted(last.attrs) + [
            r for r in sorted(last.rels) if self.entities[last.rels[r]] not in path
        ]
        fact = rng.choice(facts)
        x = self.mention(path[0])
        for source, rel in zip(path, rels, strict=False):
            x = self.rel_np(rel, source, x)
        text = self.final_question(fact, last, x)
        text = text[0].upper() + text[1:]
        plan = tuple((self.read(e, f),) for e, f in zip(path, [*rels, fact], strict=True))
        return text, self.aliases(last, fact), plan

    def compare_values(self) -> tuple[str, list[str], tuple[tuple[Read, ...], ...]] | None:
        rng = self.rng
        fact = rng.choice(sorted(COMPARE_VALUE))
        kind = ATTRIBUTES[fact]
        a = rng.choice(self.by_kind[kind])
        twin = self.lookalike.get(a.id)
        b = twin if twin is not None and rng.random() < 0.5 else rng.choice(self.by_kind[kind])
        if a is b or a.attrs[fact] == b.attrs[fact]:
            return None
        template, pick = COMPARE_VALUE[fact]
        winner = pick((a, b), key=lambda e: e.attrs[fact])
        text = template.format(a=self.mention(a), b=self.mention(b))
        return text, self.aliases(winner, fact), ((self.read(a, fact), self.read(b, fact)),)

    def compare_names(self) -> tuple[str, list[str], tuple[tuple[Read, ...], ...]] | None:
        rng = self.rng
        target_kind = rng.choice(sorted(COMPARE_NAME))
        rels = sorted(r for r, (_, t) in RELATIONS.items() if t == target_kind)
        r1, r2 = rng.choice(rels), rng.choice(rels)
        s1 = rng.choice(self.by_kind[RELATIONS[r1][0]])
        s2 = rng.choice(self.by_kind[RELATIONS[r2][0]])
        t1, t2 = self.entities[s1.rels[r1]], self.entities[s2.rels[r2]]
        fact, template, pick = COMPARE_NAME[target_kind]
        if len({s1.id, s2.id, t1.id, t2.id}) < 4 or t1.attrs[fact] == t2.attrs[fact]:
            return None
        winner = pick((t1, t2), key=lambda e: e.attrs[fact])
        a = self.rel_np(r1, s1, self.mention(s1))
        b = self.rel_np(r2, s2, self.mention(s2))
        text = template.format(a=a, b=b)
        plan = (
            (self.read(s1, r1), self.read(s2, r2)),
            (self.read(t1, fact), self.read(t2, fact)),
        )
        return text, [winner.name], plan


def generate_questions(
    entities: list[Entity], seed: int, total: int, held_out: int
) -> list[Question]:
    """`total` distinct questions mixed as KIND_MIX; `held_out` each for dev and test."""
    factory = QuestionFactory(entities, seed)
    makers = {
        "world_1hop": lambda: factory.bridge(1),
        "world_2hop_bridge": lambda: factory.bridge(2),
        "world_3hop_bridge": lambda: factory.bridge(3),
        "world_4hop_bridge": lambda: factory.bridge(4),
        "world_2hop_comparison": factory.compare_values,
        "world_4hop_comparison": factory.compare_names,
    }
    seen: set[str] = set()
    questions: list[Question] = []
    for source, share in KIND_MIX.items():
        want, drawn, attempts = round(total * share), [], 0
        while len(drawn) < want and attempts < 20 * want + 100:
            attempts += 1
            made = makers[source]()
            if made is None:
                continue
            text, answers, plan = made
            if text in seen or any(contains_words(text, a) for a in answers):
                continue
            seen.add(text)
            drawn.append((text, answers, plan))
        n_held = round(held_out * share)
        for i, (text, answers, plan) in enumerate(drawn):
            split = "dev" if i < n_held else "test" if i < 2 * n_held else "train"
            questions.append(
                Question(
                    id=f"world{seed}_{source.removeprefix('world_')}_{i}",
                    question=text,
                    answers=answers,
                    data_source=source,
                    split=split,
                    hops=sum(len(r) for r in plan),
                    evidence=[read.path for r in plan for read in r],
                    plan=plan,
                )
            )
    return questions
