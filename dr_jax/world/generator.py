"""Fictional entities with typed attributes and functional relations, drawn from one seed.

Five kinds (person, city, organisation, work, event) are linked by relations that each have
exactly one target (an organisation has one founder), so a chain of relations always names a
single entity and multi-hop questions have a unique answer. About one entity in ten gets a
near-duplicate twin (one vowel apart, same kind, different facts) to punish sloppy reading.
"""

import random
import re
from dataclasses import dataclass, field

from dr_jax.world.names import NameGenerator, near_duplicate

KINDS = ("person", "city", "organisation", "work", "event")

# relation -> (source kind, target kind)
RELATIONS: dict[str, tuple[str, str]] = {
    "birthplace": ("person", "city"),
    "employer": ("person", "organisation"),
    "mayor": ("city", "person"),
    "founder": ("organisation", "person"),
    "headquarters": ("organisation", "city"),
    "creator": ("work", "person"),
    "publisher": ("work", "organisation"),
    "location": ("event", "city"),
    "organiser": ("event", "organisation"),
}

# attribute -> kind; every value is an int (years, counts) or a short string
ATTRIBUTES: dict[str, str] = {
    "born": "person",
    "occupation": "person",
    "founded": "city",
    "population": "city",
    "elevation": "city",
    "country": "city",
    "established": "organisation",
    "employees": "organisation",
    "industry": "organisation",
    "released": "work",
    "length": "work",
    "held": "event",
    "attendance": "event",
}

OCCUPATIONS = (
    "cartographer", "glassblower", "astronomer", "shipwright", "botanist", "clockmaker",
    "engraver", "geologist", "violinist", "architect", "lexicographer", "beekeeper",
    "bookbinder", "surveyor", "chemist", "sculptor", "navigator", "linguist",
)  # fmt: skip
ORG_TYPES = (  # (name suffix, industry, works it can publish)
    ("Press", "publishing", "novel"),
    ("Publishing House", "publishing", "novel"),
    ("Pictures", "film production", "film"),
    ("Studios", "film production", "film"),
    ("Records", "music recording", "album"),
    ("Ironworks", "metalworking", None),
    ("Shipping Company", "shipping", None),
    ("Observatory Trust", "astronomy", None),
    ("Mutual Bank", "banking", None),
    ("Railway", "rail transport", None),
)
WORK_TYPES = ("novel", "film", "album")
WORK_NOUNS = (
    "Harbor", "Lantern", "Orchard", "Winter", "Letters", "Tide", "Garden", "Mirror",
    "Crossing", "Ember", "Meridian", "Hollow", "Archive", "Voyage", "Lighthouse", "Reverie",
)  # fmt: skip
EVENT_TYPES = ("Festival", "Exhibition", "Congress", "Regatta", "Games", "Fair")
COUNTRY_COUNT = 12
DICTIONARY_WORDS = frozenset(
    " ".join(suffix for suffix, _, _ in ORG_TYPES).split()
    + list(WORK_NOUNS)
    + list(EVENT_TYPES)
    + ["The", "of"]
)


@dataclass
class Entity:
    """One page-worthy thing; `attrs` holds typed facts, `rels` the ids of related entities."""

    id: int
    kind: str
    name: str
    slug: str
    attrs: dict[str, int | str] = field(default_factory=dict)
    rels: dict[str, int] = field(default_factory=dict)
    subtype: str = ""  # work type ("novel"), organisation suffix, or event type
    long: int = 0  # 0 short page, else the number of filler characters before the deferred fact
    deferred: str = ""  # the attribute or relation stated only deep inside a long page
    twin: int | None = None  # id of the near-duplicate this entity was derived from

    @property
    def path(self) -> str:
        """Events are news reports (/news/...), everything else encyclopedia articles."""
        return f"/{'news' if self.kind == 'event' else 'wiki'}/{self.slug}.html"


def slugify(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


@dataclass(frozen=True)
class WorldSpec:
    """Knobs of the generator; `entities` counts every page, twins included."""

    seed: int = 0
    entities: int = 600
    twin_fraction: float = 0.1  # share of entities that are near-duplicate distractors
    long_fraction: float = 0.12  # share of pages whose key fact sits after long filler
    long_chars: tuple[int, int] = (9_000, 14_000)  # filler before the deferred fact
    very_long_chars: tuple[int, int] = (42_000, 46_000)  # beyond a 40,960-char window too
    very_long_share: float = 0.25  # share of long pages that are very long


_KIND_WEIGHTS = {"person": 0.34, "city": 0.16, "organisation": 0.2, "work": 0.18, "event": 0.12}


def generate_entities(spec: WorldSpec) -> list[Entity]:
    """All entities, relations wired and attributes drawn; ids are list indices."""
    rng = random.Random(f"dr_jax.world:{spec.seed}:entities")
    names = NameGenerator(rng)
    countries = [names.place() for _ in range(COUNTRY_COUNT)]
    n_twins = int(spec.entities * spec.twin_fraction)
    n_base = spec.entities - n_twins
    counts = {k: max(2, round(w * n_base)) for k, w in _KIND_WEIGHTS.items()}
    entities: list[Entity] = []
    for kind in KINDS:
        for _ in range(counts[kind]):
            entities.append(_new_entity(len(entities), kind, names, rng))
    pools = _Pools.of(entities)
    for e in entities:
        e.rels = {
            rel: pools.draw(e, rel, rng) for rel, (src, _) in RELATIONS.items() if src == e.kind
        }
    for e in entities:
        _draw_attrs(e, entities, countries, rng)
    for source_id in rng.sample(range(len(entities)), min(n_twins, len(entities))):
        twin = _make_twin(
            entities[source_id], len(entities), names, countries, entities, pools, rng
        )
        if twin is not None:
            entities.append(twin)
    for e in entities:
        _choose_length(e, spec, rng)
    return entities


def _new_entity(i: int, kind: str, names: NameGenerator, rng: random.Random) -> Entity:
    subtype = ""
    if kind == "person":
        name = names.person()
    elif kind == "city":
        name = names.place()
    elif kind == "organisation":
        subtype = rng.choice(ORG_TYPES)[0]
        name = names.unique(lambda: f"{names.word()} {subtype}")
    elif kind == "work":
        subtype = rng.choice(WORK_TYPES)
        name = names.unique(
            lambda: rng.choice(
                (
                    f"The {names.word()} {rng.choice(WORK_NOUNS)}",
                    f"{rng.choice(WORK_NOUNS)} of {names.word()}",
                    f"{names.word()} {rng.choice(WORK_NOUNS)}",
                )
            )
        )
    else:
        subtype = rng.choice(EVENT_TYPES)
        name = names.unique(lambda: f"{names.word()} {subtype}")
    return Entity(id=i, kind=kind, name=name, slug=slugify(name), subtype=subtype)


@dataclass(frozen=True)
class _Pools:
    """Candidate targets of each relation: entities of the target kind (works only go to
    organisations that publish their type: novels to a press, films to a studio)."""

    by_kind: dict[str, list[int]]
    publishers: dict[str, list[int]]

    @classmethod
    def of(cls, entities: list[Entity]) -> "_Pools":
        by_kind = {k: [e.id for e in entities if e.kind == k] for k in KINDS}
        publishers = {}
        for work_type in WORK_TYPES:
            fitting = {suffix for suffix, _, works in ORG_TYPES if works == work_type}
            orgs = by_kind["organisation"]
            publishers[work_type] = [o for o in orgs if entities[o].subtype in fitting] or orgs
        return cls(by_kind, publishers)

    def draw(self, e: Entity, rel: str, rng: random.Random) -> int:
        pool = self.publishers[e.subtype] if rel == "publisher" else self.by_kind[RELATIONS[rel][1]]
        choice = rng.choice(pool)
        while choice == e.id and len(pool) > 1:
            choice = rng.choice(pool)
        return choice


def _draw_attrs(e: Entity, entities: list[Entity], countries: list[str], rng) -> None:
    """Years respect the relations loosely (organisations outlive their founders' births)."""
    a = e.attrs
    if e.kind == "person":
        a["born"] = rng.randint(1780, 1965)
        a["occupation"] = rng.choice(OCCUPATIONS)
    elif e.kind == "city":
        a["founded"] = rng.randint(1100, 1890)
        a["population"] = rng.randint(12_000, 2_400_000)
        a["elevation"] = rng.randint(5, 990)
        a["country"] = rng.choice(countries)
    elif e.kind == "organisation":
        a["established"] = entities[e.rels["founder"]].attrs["born"] + rng.randint(22, 58)
        a["employees"] = rng.randint(40, 90_000)
        a["industry"] = next(ind for suffix, ind, _ in ORG_TYPES if suffix == e.subtype)
    elif e.kind == "work":
        a["released"] = min(2024, entities[e.rels["creator"]].attrs["born"] + rng.randint(20, 60))
        a["length"] = (
            rng.randint(120, 900) if e.subtype == "novel" else rng.randint(34, 190)
        )  # pages, or minutes
    else:
        organiser = entities[e.rels["organiser"]]
        a["held"] = min(2024, organiser.attrs["established"] + rng.randint(3, 90))
        a["attendance"] = rng.randint(1_200, 480_000)


def _make_twin(
    source: Entity,
    i: int,
    names: NameGenerator,
    countries: list[str],
    entities: list[Entity],
    pools: _Pools,
    rng: random.Random,
) -> Entity | None:
    """Same kind as `source`, a look-alike name, fresh attributes, about half its relations."""
    for _ in range(8):
        name = near_duplicate(source.name, rng, DICTIONARY_WORDS)
        if names.claim(name):
            break
    else:
        return None
    twin = Entity(
        id=i,
        kind=source.kind,
        name=name,
        slug=slugify(name),
        subtype=source.subtype,
        twin=source.id,
    )
    twin.rels = {
        rel: target if rng.random() < 0.5 else pools.draw(twin, rel, rng)
        for rel, target in source.rels.items()
    }
    _draw_attrs(twin, entities, countries, rng)
    for key, value in twin.attrs.items():  # at least the numbers must differ
        if isinstance(value, int) and value == source.attrs[key]:
            twin.attrs[key] = value + 1
    return twin


def _choose_length(e: Entity, spec: WorldSpec, rng: random.Random) -> None:
    if rng.random() >= spec.long_fraction:
        return
    span = spec.very_long_chars if rng.random() < spec.very_long_share else spec.long_chars
    e.long = rng.randint(*span)
    e.deferred = rng.choice([*sorted(k for k in e.attrs), *sorted(e.rels)])
