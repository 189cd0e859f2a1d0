"""The World: entities, their pages and questions, generated from one seed."""

from dataclasses import dataclass
from functools import cached_property

from dr_jax.world.generator import Entity, WorldSpec, generate_entities
from dr_jax.world.index import SearchIndex
from dr_jax.world.pages import SITE, render_pages
from dr_jax.world.questions import Question, generate_questions

SIZES = {"tiny": 120, "default": 600}
SPLITS = ("train", "dev", "test")


def _spec(seed: int, size: str | int) -> WorldSpec:
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown world size {size!r}: use one of {sorted(SIZES)} or an int")
        size = SIZES[size]
    if size < 40:
        raise ValueError(f"a world needs at least 40 entities to draw questions (got {size})")
    return WorldSpec(seed=seed, entities=size)


@dataclass
class World:
    """Pages (path -> HTML) and questions of one generated world; build with `generate`."""

    seed: int
    entities: list[Entity]
    pages: dict[str, str]
    questions: list[Question]

    @classmethod
    def generate(cls, seed: int = 0, size: str | int = "default") -> "World":
        """Deterministic in (seed, size): the same arguments give byte-identical pages.

        `size` is "tiny" (120 entities), "default" (600) or an entity (= page) count.
        Questions: twice the entity count (at most 20,000), a twelfth of them (at most 1,000)
        each for dev and test: 100 each in the default world.
        """
        spec = _spec(seed, size)
        entities = generate_entities(spec)
        pages = render_pages(entities, seed)
        total = min(2 * spec.entities, 20_000)
        questions = generate_questions(entities, seed, total, held_out=min(1_000, total // 12))
        return cls(seed=seed, entities=entities, pages=pages, questions=questions)

    def split(self, name: str) -> list[Question]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use one of {SPLITS}")
        return [q for q in self.questions if q.split == name]

    @cached_property
    def titles(self) -> dict[str, str]:
        """Page path -> entity name (the page title)."""
        return {e.path: e.name for e in self.entities}

    @cached_property
    def entities_by_path(self) -> dict[str, Entity]:
        return {e.path: e for e in self.entities}

    @cached_property
    def index(self) -> SearchIndex:
        """BM25 index over the pages, built on first use."""
        return SearchIndex(self.pages, self.titles)

    def home_page(self) -> str:
        """The "/" page: a short description and a search box."""
        return (
            f"<!DOCTYPE html><html><head><title>{SITE}</title></head><body><h1>{SITE}</h1>"
            f"<p>{len(self.pages)} articles about a fictional world.</p>"
            '<form action="/search"><input name="q"></form></body></html>'
        )
