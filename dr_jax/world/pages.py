"""Render an entity as an encyclopedia-style HTML page.

Every fact is stated once in prose (with one of several phrasings) and, unless it is the
page's deferred fact, once more in the infobox, so a reader that drops tables still sees it.
Long pages push their deferred fact behind thousands of characters of fact-free history
prose, beyond the first reading window of the browse tool.
"""

import html
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from dr_jax.world.generator import Entity
from dr_jax.world.names import filler_word

SITE = "Worldpedia"

# fact -> phrasings; {s} subject, {v} value (already formatted, links included), {p} possessive
FACT_SENTENCES: dict[str, tuple[str, ...]] = {
    "born": (
        "{s} was born in {v}.",
        "Records give {v} as the year {s} was born.",
        "{s} came into the world in {v}.",
    ),
    "occupation": (
        "By trade, {s} was {v}.",
        "{s} worked as {v} for most of {p} life.",
        "{s} is remembered chiefly as {v}.",
    ),
    "birthplace": (
        "{s} was born in the city of {v}.",
        "{s} grew up in {v}, the city of {p} birth.",
        "The birthplace of {s} was {v}.",
    ),
    "employer": (
        "For much of {p} career {s} worked for {v}.",
        "{s} spent many years employed by {v}.",
        "{s} joined the staff of {v} and stayed for decades.",
    ),
    "founded": (
        "{s} was founded in {v}.",
        "The settlement that became {s} was established in {v}.",
        "{s} dates its founding to {v}.",
    ),
    "population": (
        "{s} has a population of {v}.",
        "At the most recent census, {s} counted {v} inhabitants.",
        "Some {v} people live in {s}.",
    ),
    "elevation": (
        "{s} lies at an elevation of {v} metres.",
        "The centre of {s} sits {v} metres above sea level.",
    ),
    "country": ("{s} is a city in {v}.", "{s} lies in the country of {v}."),
    "mayor": ("The mayor of {s} is {v}.", "{v} serves as the mayor of {s}."),
    "established": (
        "{s} was founded in {v}.",
        "{s} was established in {v}.",
        "{s} opened its doors in {v}.",
    ),
    "employees": (
        "{s} employs {v} people.",
        "The workforce of {s} numbers {v} employees.",
        "{s} has {v} employees.",
    ),
    "industry": ("{s} operates in the {v} industry.", "{s} is a business in {v}."),
    "founder": (
        "{s} was founded by {v}.",
        "{v} founded {s}.",
        "The founder of {s} was {v}.",
    ),
    "headquarters": ("{s} is headquartered in {v}.", "The head office of {s} is in {v}."),
    "held": ("{s} was held in {v}.", "{s} took place in the year {v}."),
    "attendance": ("{v} people attended {s}.", "{s} drew an attendance of {v}."),
    "location": ("The host city of {s} was {v}.", "{s} was staged in the city of {v}."),
    "organiser": ("{s} was organised by {v}.", "The organiser of {s} was {v}."),
}
WORK_SENTENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "novel": {
        "released": ("{s} was first published in {v}.", "{s} appeared in print in {v}."),
        "length": ("The first edition of {s} runs to {v} pages.", "{s} is {v} pages long."),
        "creator": ("{s} was written by {v}.", "The author of {s} is {v}."),
        "publisher": ("{s} was published by {v}.", "The publisher of {s} was {v}."),
    },
    "film": {
        "released": ("{s} was released in {v}.", "{s} premiered in {v}."),
        "length": ("{s} has a running time of {v} minutes.", "{s} runs for {v} minutes."),
        "creator": ("{s} was directed by {v}.", "The director of {s} was {v}."),
        "publisher": ("{s} was produced by {v}.", "The studio behind {s} was {v}."),
    },
    "album": {
        "released": ("{s} was released in {v}.", "{s} came out in {v}."),
        "length": ("{s} lasts {v} minutes.", "The running time of {s} is {v} minutes."),
        "creator": ("{s} was recorded by {v}.", "The artist behind {s} is {v}."),
        "publisher": ("{s} was released on the {v} label.", "The label of {s} was {v}."),
    },
}
INFOBOX_LABELS = {
    "born": "Born", "occupation": "Occupation", "birthplace": "Birthplace",
    "employer": "Employer", "founded": "Founded", "population": "Population",
    "elevation": "Elevation", "country": "Country", "mayor": "Mayor",
    "established": "Founded", "employees": "Employees", "industry": "Industry",
    "founder": "Founder", "headquarters": "Headquarters", "released": "Released",
    "length": "Length", "creator": "Creator", "publisher": "Publisher", "held": "Held",
    "attendance": "Attendance", "location": "Location", "organiser": "Organiser",
}  # fmt: skip
SECTIONS = {  # kind -> [(heading, facts)]
    "person": [("Early life", ("born", "birthplace")), ("Career", ("occupation", "employer"))],
    "city": [
        ("History", ("founded", "mayor")),
        ("Geography", ("country", "elevation")),
        ("Demographics", ("population",)),
    ],
    "organisation": [
        ("History", ("established", "founder")),
        ("Operations", ("headquarters", "industry", "employees")),
    ],
    "work": [("Production", ("creator", "publisher")), ("Release", ("released", "length"))],
    "event": [("Background", ("organiser", "location")), ("Edition", ("held", "attendance"))],
}
NAV = ("Main page", "Contents", "Current events", "Random article", "About", "Help")
NEWS_SITE = "World Herald"
NEWS_NAV = ("Home", "World", "Culture", "Business", "Science", "Opinion")

_FILLER = (
    "The {a} quarter grew slowly around the old {b} road, and its markets drew traders "
    "from the surrounding valleys.",
    "Local chroniclers describe long winters, a stubborn {a} guild and a rivalry with the "
    "nearby {b} estate that lasted for generations.",
    "A series of floods along the {a} river reshaped the lower districts, after which the "
    "{b} family paid for new embankments.",
    "Travellers often remarked on the {a} bells, whose sound was said to carry as far as "
    "the {b} hills on a still evening.",
    "Much of the surviving correspondence concerns the {a} archive and a dispute over the "
    "ownership of the {b} manuscripts.",
    "Several minor disputes with the {a} council were eventually settled by arbitration "
    "before the elders of {b}.",
    "The {a} workshops supplied lamps, rope and sailcloth, and the {b} ferry carried their "
    "goods across the estuary.",
    "Historians still debate whether the {a} charter was ever formally sealed, since only "
    "a copy kept at {b} has survived.",
    "In the years that followed, the {a} society organised lectures, concerts and a small "
    "lending library near the {b} gate.",
    "Visitors from {a} described the place as quiet and orderly, if somewhat suspicious of "
    "strangers from {b}.",
)
_FILLER_HEADINGS = ("Later history", "Archives", "Legacy", "Reception", "Chronicle")


def format_value(key: str, value: int | str) -> str:
    """How a value is printed on pages and in answers (thousands separators for counts)."""
    if isinstance(value, int) and key in ("population", "employees", "attendance"):
        return f"{value:,}"
    return str(value)


def fact_sentences(e: Entity) -> dict[str, tuple[str, ...]]:
    return WORK_SENTENCES[e.subtype] if e.kind == "work" else FACT_SENTENCES


def describe(e: Entity, entities: list[Entity]) -> str:
    """The lead clause after "X is ..."; it never gives away a long page's deferred fact."""
    if e.deferred in ("occupation", "birthplace", "country", "industry"):
        return f"{article(e.kind)} of some local renown"
    if e.kind == "person":
        return f"{article(e.attrs['occupation'])} from {entities[e.rels['birthplace']].name}"
    if e.kind == "city":
        return f"a city in {e.attrs['country']}"
    if e.kind == "organisation":
        return article(f"{e.attrs['industry']} company")
    if e.kind == "work":
        return f"a {e.subtype}"
    return f"a recurring {e.subtype.lower()}"


def article(noun: str) -> str:
    """'an astronomer', 'a botanist'."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _link(e: Entity) -> str:
    return f'<a href="{e.path}">{html.escape(e.name)}</a>'


def _filler(rng: random.Random, words: list[str], chars: int) -> list[str]:
    """Fact-free paragraphs (no digits) of about `chars` characters in total."""
    n = chars // 100 + 1  # filler sentences average ~140 characters
    templates = rng.choices(_FILLER, k=n)
    picks = rng.choices(words, k=2 * n)
    paragraphs, total, i = [], 0, 0
    while total < chars:
        size = rng.randint(3, 6)
        sentences = [
            templates[(i + j) % n].format(a=picks[(2 * (i + j)) % (2 * n)],
                                          b=picks[(2 * (i + j) + 1) % (2 * n)])
            for j in range(size)
        ]  # fmt: skip
        i += size
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return paragraphs


# (relation, the target's section heading, sentence): the target page names its sources
BACKLINKS = {
    "person": (("creator", "Works", "Works by {s} include {v}."),
               ("founder", "Enterprises", "{s} founded {v}.")),
    "city": (("headquarters", "Economy", "Companies based in {s} include {v}."),
             ("location", "Events", "{s} has hosted {v}.")),
}  # fmt: skip
MAX_BACKLINKS = 3


@dataclass(frozen=True)
class Links:
    """What other pages say about an entity: near-duplicates and entities pointing at it."""

    lookalikes: tuple[int, ...] = ()
    backlinks: dict[str, tuple[int, ...]] = field(default_factory=dict)  # relation -> sources


def link_index(entities: list[Entity]) -> dict[int, Links]:
    """Links of every entity, from one pass over the relations (at most MAX_BACKLINKS each)."""
    lookalikes: dict[int, list[int]] = {}
    backlinks: dict[int, dict[str, list[int]]] = {}
    for e in entities:
        if e.twin is not None:
            lookalikes.setdefault(e.twin, []).append(e.id)
            lookalikes.setdefault(e.id, []).append(e.twin)
        for rel, target in e.rels.items():
            sources = backlinks.setdefault(target, {}).setdefault(rel, [])
            if len(sources) < MAX_BACKLINKS:
                sources.append(e.id)
    return {
        e.id: Links(
            tuple(lookalikes.get(e.id, ())),
            {rel: tuple(ids) for rel, ids in backlinks.get(e.id, {}).items()},
        )
        for e in entities
    }


def render_pages(entities: list[Entity], seed: int) -> dict[str, str]:
    """Path -> HTML of every entity's page."""
    links = link_index(entities)
    return {e.path: render_page(e, entities, seed, links[e.id]) for e in entities}


def render_page(e: Entity, entities: list[Entity], seed: int, links: Links) -> str:
    """Full HTML document for one entity; deterministic in (seed, entity).

    Events are news reports, everything else encyclopedia articles. Near-duplicates are named
    in a "not to be confused" hatnote; entities that point here are named in prose.
    """
    rng = random.Random(f"dr_jax.world:{seed}:page:{e.id}")
    sentences = fact_sentences(e)
    possessive = rng.choice(("his", "her")) if e.kind == "person" else "its"
    values = {k: html.escape(format_value(k, v)) for k, v in e.attrs.items()}
    values.update({k: _link(entities[t]) for k, t in e.rels.items()})
    subject = f"<i>{html.escape(e.name)}</i>" if e.kind == "work" else html.escape(e.name)

    def say(fact: str) -> str:
        value = article(values[fact]) if fact == "occupation" else values[fact]
        return rng.choice(sentences[fact]).format(s=subject, v=value, p=possessive)

    sections = [
        (heading, " ".join(say(f) for f in facts if f != e.deferred))
        for heading, facts in SECTIONS[e.kind]
    ]
    for rel, heading, sentence in BACKLINKS.get(e.kind, ()):
        if sources := links.backlinks.get(rel):
            named = _listing([_link(entities[i]) for i in sources])
            sections.append((heading, sentence.format(s=subject, v=named)))
    filler: list[tuple[str, list[str]]] = []
    if e.long:
        words = [filler_word(rng) for _ in range(12)]
        paragraphs = _filler(rng, words, e.long)
        per_section = max(1, len(paragraphs) // len(_FILLER_HEADINGS))
        for i in range(0, len(paragraphs), per_section):
            heading = _FILLER_HEADINGS[(i // per_section) % len(_FILLER_HEADINGS)]
            filler.append((heading, paragraphs[i : i + per_section]))
    page = _Page(
        e=e,
        lead=f"{subject} is {html.escape(describe(e, entities))}.",
        sections=[(h, text) for h, text in sections if text],
        filler=filler,
        deferred=say(e.deferred) if e.long else "",
        infobox=[(INFOBOX_LABELS[k], values[k]) for k in (*e.attrs, *e.rels) if k != e.deferred],
        hatnote=" or ".join(_link(entities[t]) for t in links.lookalikes),
        related=[_link(entities[t]) for t in dict.fromkeys(e.rels.values())],
    )
    return _news(page, rng) if e.kind == "event" else _encyclopedia(page)


@dataclass
class _Page:
    """The rendered pieces of one page, before a layout arranges them."""

    e: Entity
    lead: str
    sections: list[tuple[str, str]]  # (heading, sentences stating facts)
    filler: list[tuple[str, list[str]]]  # (heading, fact-free paragraphs)
    deferred: str  # the sentence a long page keeps for its end
    infobox: list[tuple[str, str]]
    hatnote: str
    related: list[str]


def _encyclopedia(page: _Page) -> str:
    name = html.escape(page.e.name)
    body = [f"<h2>{h}</h2>\n<p>{text}</p>" for h, text in page.sections]
    body += [
        f"<h2>{h}</h2>\n" + "\n".join(f"<p>{p}</p>" for p in paragraphs)
        for h, paragraphs in page.filler
    ]
    if page.deferred:
        body.append(f"<h2>Notes</h2>\n<p>{page.deferred}</p>")
    hatnote = f'<p class="hatnote">Not to be confused with {page.hatnote}.</p>\n' * bool(
        page.hatnote
    )
    rows = "\n".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in page.infobox)
    related = "\n".join(f"<li>{link}</li>" for link in page.related)
    article = f"""{hatnote}<p>{page.lead}</p>
<table class="infobox">
<caption>{name}</caption>
{rows}
</table>
{chr(10).join(body)}
<h2>See also</h2>
<ul>
{related}
</ul>"""
    footer = f"""<p>This article is part of {SITE}, a fictional encyclopedia generated for research
agents. Text is available under the Creative Commons Attribution-ShareAlike License.</p>
<p><a href="/">Privacy policy</a> | <a href="/">About {SITE}</a> | <a href="/">Disclaimers</a>
</p>"""
    search = f'<form action="/search"><input name="q" placeholder="Search {SITE}"></form>'
    return _document(name, SITE, NAV, search, article, "", footer)


def _news(page: _Page, rng: random.Random) -> str:
    """A news report: byline, paragraphs without infobox, a "most read" sidebar."""
    name = html.escape(page.e.name)
    reporter = f"{filler_word(rng)} {filler_word(rng)}"
    paragraphs = [page.lead] + [text for _, text in page.sections]
    paragraphs += [p for _, chunk in page.filler for p in chunk]
    if page.deferred:
        paragraphs.append(f"Editor's note: {page.deferred}")
    if page.hatnote:
        paragraphs.insert(0, f"<em>This report is not about {page.hatnote}.</em>")
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    related = "\n".join(f"<li>{link}</li>" for link in page.related)
    article = f"""<p class="byline">By {reporter}, staff reporter</p>
{body}
<h2>Related coverage</h2>
<ul>
{related}
</ul>"""
    aside = """<aside><h3>Most read</h3><ol><li><a href="/">Weather warnings for the coast</a></li>
<li><a href="/">Markets close higher</a></li></ol></aside>
"""
    footer = f"""<p>&copy; {NEWS_SITE}, a fictional newspaper generated for research agents.
<a href="/">Terms of use</a> | <a href="/">Privacy policy</a> | <a href="/">Contact us</a></p>
"""
    subscribe = f'<p class="subscribe">Subscribe for unlimited access to {NEWS_SITE} reporting.</p>'
    return _document(name, NEWS_SITE, NEWS_NAV, subscribe, article, aside, footer)


def _document(
    name: str, site: str, nav: Sequence[str], header: str, article: str, aside: str, footer: str
) -> str:
    """The page around an article: the site's header and navigation, the article, an optional
    aside, the footer."""
    links = " | ".join(f'<a href="/">{item}</a>' for item in nav)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{name} - {site}</title></head>
<body>
<header><nav class="site-nav"><b>{site}</b> | {links}</nav>
{header}</header>
<main>
<article>
<h1>{name}</h1>
{article}
</article>
{aside}</main>
<footer>{footer}</footer>
</body>
</html>
"""
