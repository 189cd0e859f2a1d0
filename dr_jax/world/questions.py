"""Questions over the world: 1-hop lookups, 2/3/4-hop bridge chains, 2/4-hop comparisons.

A bridge question walks functional relations (organisation -> founder -> birthplace -> ...)
and asks for an attribute or relation of the last entity, so it has exactly one answer and
needs one page per entity on the path. A comparison question needs the same fact on two
(2-hop) or two bridged (4-hop) entities. The answer never appears in the question text.
"""

import random
from dataclasses import dataclass, field

from dr_jax.reward import normalize_answer
from dr_jax.world.generator import ATTRIBUTES, RELATIONS, Entity
from dr_jax.world.pages import article, format_value


@dataclass(frozen=True)
class Read:
    """One fact the solver must read: `value` as printed on the page at `path` (title `title`)."""

    path: str
    title: str
    fact: str
    value: str


Plan = tuple[tuple[Read, ...], ...]  # rounds of reads; the reads of one round are independent
Drawn = tuple[str, list[str], Plan]  # question text, gold aliases, plan


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
    plan: Plan = field(default=(), repr=False)


KIND_MIX = {  # data_source -> share of all questions
    "world_1hop": 0.25,
    "world_2hop_bridge": 0.2,
    "world_3hop_bridge": 0.15,
    "world_4hop_bridge": 0.1,
    "world_2hop_comparison": 0.15,
    "world_4hop_comparison": 0.15,
}

# Every phrasing has variants (picked by the question RNG) so a policy cannot key on wording.
WORK_NP = {  # work type -> relation -> noun phrases
    "novel": {"creator": ("the author of {x}", "the writer of {x}"),
              "publisher": ("the publisher of {x}", "the company that published {x}")},
    "film": {"creator": ("the director of {x}", "the person who directed {x}"),
             "publisher": ("the studio that produced {x}", "the production company of {x}")},
    "album": {"creator": ("the artist behind {x}", "the musician who recorded {x}"),
              "publisher": ("the label that released {x}", "the record label of {x}")},
}  # fmt: skip
WORK_REL_Q = {
    "novel": {"creator": ("Who wrote {x}?", "Who is the author of {x}?"),
              "publisher": ("Which company published {x}?", "Who was the publisher of {x}?")},
    "film": {"creator": ("Who directed {x}?", "Who was the director of {x}?"),
             "publisher": ("Which studio produced {x}?", "What studio was behind {x}?")},
    "album": {"creator": ("Who recorded {x}?", "Which artist recorded {x}?"),
              "publisher": ("On which label was {x} released?", "What label released {x}?")},
}  # fmt: skip
REL_NP = {
    "birthplace": ("the birthplace of {x}", "the city where {x} was born", "the hometown of {x}"),
    "employer": ("the employer of {x}", "the organisation that employed {x}"),
    "mayor": ("the mayor of {x}", "the person who serves as mayor of {x}"),
    "founder": ("the founder of {x}", "the person who founded {x}"),
    "headquarters": ("the headquarters city of {x}", "the city where {x} has its head office"),
    "location": ("the host city of {x}", "the city that hosted {x}"),
    "organiser": ("the organiser of {x}", "the organisation behind {x}"),
}
REL_Q = {
    "birthplace": ("In which city was {x} born?", "Where was {x} born?",
                   "What is the birthplace of {x}?"),
    "employer": ("Which organisation employed {x}?", "For which organisation did {x} work?",
                 "Who was the employer of {x}?"),
    "mayor": ("Who is the mayor of {x}?", "Who serves as mayor of {x}?"),
    "founder": ("Who founded {x}?", "Who was the founder of {x}?", "Name the founder of {x}."),
    "headquarters": ("In which city is {x} headquartered?", "Where is the head office of {x}?"),
    "location": ("In which city was {x} held?", "Which city hosted {x}?"),
    "organiser": ("Which organisation organised {x}?", "Who organised {x}?"),
}  # fmt: skip
ATTR_Q = {
    "born": ("In what year was {x} born?", "When was {x} born?",
             "What is the birth year of {x}?"),
    "occupation": ("What was the occupation of {x}?", "What did {x} do for a living?"),
    "founded": ("In what year was {x} founded?", "When was {x} founded?"),
    "population": ("What is the population of {x}?", "How many people live in {x}?"),
    "elevation": ("At what elevation, in metres, does {x} lie?",
                  "How many metres above sea level is {x}?"),
    "country": ("In which country is {x}?", "{X} lies in which country?"),
    "established": ("In what year was {x} founded?", "When was {x} established?"),
    "employees": ("How many people does {x} employ?", "How many employees does {x} have?"),
    "industry": ("In which industry does {x} operate?", "What industry is {x} in?"),
    "held": ("In what year was {x} held?", "When did {x} take place?"),
    "attendance": ("How many people attended {x}?", "What was the attendance of {x}?"),
}  # fmt: skip
WORK_ATTR_Q = {
    "novel": {"released": ("In what year was {x} first published?", "When did {x} appear?"),
              "length": ("How many pages long is {x}?", "How many pages does {x} have?")},
    "film": {"released": ("In what year was {x} released?", "When did {x} premiere?"),
             "length": ("How many minutes long is {x}?", "What is the running time of {x}?")},
    "album": {"released": ("In what year was {x} released?", "When did {x} come out?"),
              "length": ("How many minutes long is {x}?", "What is the running time of {x}?")},
}  # fmt: skip
# attribute -> (question templates, pick: min or max); answer is the winning value
COMPARE_VALUE = {
    "born": (("In what year was the elder of {a} and {b} born?",
              "Of {a} and {b}, when was the older one born?"), min),
    "founded": (("In what year was the older of the cities {a} and {b} founded?",
                 "Of the cities {a} and {b}, when was the older one founded?"), min),
    "population": (("What is the population of the more populous of {a} and {b}?",
                    "How many people live in the larger of the cities {a} and {b}?"), max),
    "established": (("In what year was the older of {a} and {b} founded?",
                     "Which founding year is earlier, that of {a} or that of {b}?"), min),
    "employees": (("How many employees does the larger of {a} and {b} have?",
                   "Of {a} and {b}, how many people does the bigger employer employ?"), max),
    "attendance": (("How many people attended the better attended of {a} and {b}?",
                    "What was the larger attendance, that of {a} or that of {b}?"), max),
}  # fmt: skip
# target kind -> (attribute, question templates, pick); answer is the winning entity's name
COMPARE_NAME = {
    "person": ("born", ("Who was born first, {a} or {b}?",
                        "Who is older: {a} or {b}?"), min),
    "city": ("population", ("Which city is more populous, {a} or {b}?",
                            "Which has more inhabitants: {a} or {b}?"), max),
    "organisation": ("established", ("Which was founded earlier, {a} or {b}?",
                                     "Which is older: {a} or {b}?"), min),
}  # fmt: skip


def contains_words(haystack: str, needle: str) -> bool:
    """Whether `needle` occurs in `haystack` as whole words after normalisation."""
    return f" {normalize_answer(needle)} " in f" {normalize_answer(haystack)} "


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
        options = WORK_NP[source.subtype][rel] if source.kind == "work" else REL_NP[rel]
        return self.rng.choice(options).format(x=x)

    def final_question(self, fact: str, e: Entity, x: str) -> str:
        if e.kind == "work":
            options = {**WORK_REL_Q[e.subtype], **WORK_ATTR_Q[e.subtype]}[fact]
        else:
            options = {**REL_Q, **ATTR_Q}[fact]
        text = self.rng.choice(options).format(x=x, X=x[0].upper() + x[1:])
        return text[0].upper() + text[1:]

    def value(self, e: Entity, fact: str) -> str:
        if fact in e.rels:
            return self.entities[e.rels[fact]].name
        return format_value(fact, e.attrs[fact])

    def aliases(self, e: Entity, fact: str) -> list[str]:
        """The value as printed first, then the other ways a correct answer may be written."""
        shown = self.value(e, fact)
        out = [shown]
        raw = e.attrs.get(fact)
        if isinstance(raw, int):
            out.append(str(raw))
        if fact == "elevation":
            out += [f"{raw} metres", f"{raw} m"]
        elif fact == "length":
            out.append(f"{raw} {'pages' if e.subtype == 'novel' else 'minutes'}")
        elif fact == "occupation":
            out.append(article(shown))
        elif fact == "industry":
            out.append(f"{shown} industry")
        return list(dict.fromkeys(out))

    def read(self, e: Entity, fact: str) -> Read:
        return Read(e.path, e.name, fact, self.value(e, fact))

    # -- kinds ----------------------------------------------------------------------------
    def bridge(self, hops: int) -> Drawn | None:
        """Walk hops-1 relations from a random start, then ask a fact of the last entity."""
        rng = self.rng
        path = [rng.choice(self.entities)]
        visited = {path[0].id}
        rels: list[str] = []
        for _ in range(hops - 1):
            options = sorted(path[-1].rels)
            rng.shuffle(options)
            step = next((r for r in options if path[-1].rels[r] not in visited), None)
            if step is None:
                return None
            rels.append(step)
            path.append(self.entities[path[-1].rels[step]])
            visited.add(path[-1].id)
        last = path[-1]
        facts = sorted(last.attrs) + [r for r in sorted(last.rels) if last.rels[r] not in visited]
        fact = rng.choice(facts)
        x = self.mention(path[0])
        for source, rel in zip(path[:-1], rels, strict=True):
            x = self.rel_np(rel, source, x)
        text = self.final_question(fact, last, x)
        plan = tuple((self.read(e, f),) for e, f in zip(path, [*rels, fact], strict=True))
        return text, self.aliases(last, fact), plan

    def compare_values(self) -> Drawn | None:
        rng = self.rng
        fact = rng.choice(sorted(COMPARE_VALUE))
        kind = ATTRIBUTES[fact]
        a = rng.choice(self.by_kind[kind])
        twin = self.lookalike.get(a.id)
        b = twin if twin is not None and rng.random() < 0.5 else rng.choice(self.by_kind[kind])
        if a is b or a.attrs[fact] == b.attrs[fact]:
            return None
        templates, pick = COMPARE_VALUE[fact]
        winner = pick((a, b), key=lambda e: e.attrs[fact])
        text = rng.choice(templates).format(a=self.mention(a), b=self.mention(b))
        return text, self.aliases(winner, fact), ((self.read(a, fact), self.read(b, fact)),)

    def compare_names(self) -> Drawn | None:
        rng = self.rng
        target_kind = rng.choice(sorted(COMPARE_NAME))
        rels = sorted(r for r, (_, t) in RELATIONS.items() if t == target_kind)
        r1, r2 = rng.choice(rels), rng.choice(rels)
        s1 = rng.choice(self.by_kind[RELATIONS[r1][0]])
        s2 = rng.choice(self.by_kind[RELATIONS[r2][0]])
        t1, t2 = self.entities[s1.rels[r1]], self.entities[s2.rels[r2]]
        fact, templates, pick = COMPARE_NAME[target_kind]
        if len({s1.id, s2.id, t1.id, t2.id}) < 4 or t1.attrs[fact] == t2.attrs[fact]:
            return None
        winner = pick((t1, t2), key=lambda e: e.attrs[fact])
        a = self.rel_np(r1, s1, self.mention(s1))
        b = self.rel_np(r2, s2, self.mention(s2))
        text = rng.choice(templates).format(a=a, b=b)
        plan = (
            (self.read(s1, r1), self.read(s2, r2)),
            (self.read(t1, fact), self.read(t2, fact)),
        )
        return text, [winner.name], plan


def generate_questions(
    entities: list[Entity], seed: int, total: int, held_out: int
) -> list[Question]:
    """About `total` distinct questions mixed as KIND_MIX; `held_out` each for dev and test.

    Held-out questions are drawn first; a train question may not read any (page, fact) that a
    held-out question reads, so training on train trajectories (whose reasoning quotes the
    facts) cannot teach a held-out answer or shortcut one of its hops.
    """
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
    held_facts: set[tuple[str, str]] = set()
    questions: list[Question] = []

    def draw(source: str, want: int, split: str) -> None:
        drawn, attempts = 0, 0
        while drawn < want and attempts < 50 * want + 100:
            attempts += 1
            made = makers[source]()
            if made is None:
                continue
            text, answers, plan = made
            facts = {(r.path, r.fact) for round_ in plan for r in round_}
            if text in seen or any(contains_words(text, a) for a in answers):
                continue
            if split == "train" and not facts.isdisjoint(held_facts):
                continue
            if split != "train":
                held_facts.update(facts)
            seen.add(text)
            questions.append(
                Question(
                    id=f"world{seed}_{source.removeprefix('world_')}_{split}{drawn}",
                    question=text,
                    answers=answers,
                    data_source=source,
                    split=split,
                    hops=sum(len(r) for r in plan),
                    evidence=[read.path for r in plan for read in r],
                    plan=plan,
                )
            )
            drawn += 1

    for split in ("dev", "test"):
        for source, share in KIND_MIX.items():
            draw(source, round(held_out * share), split)
    for source, share in KIND_MIX.items():
        draw(source, round((total - 2 * held_out) * share), "train")
    return questions
