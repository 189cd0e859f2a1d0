"""Browsing real saved web pages, served from loopback, returns the article and not the chrome."""

import asyncio
import json

import pytest

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.loopback import LoopbackServer, Reply, Request

# page file -> (a sentence of the article, navigation/boilerplate text present in the HTML)
PAGES = {
    "blog.python.org.html": (
        "Python 3.6.0 is the newest major release of the Python language",
        ["Subscribe"],
    ),
    "caktusgroup.com.django.html": (
        "I encountered a presenter’s nightmare: a broken demo",
        ["Privacy Policy", "Newsletter", "Contact us"],
    ),
    "creativecommons.org.html": (
        "Creative Commons helps you legally share your knowledge and creativity",
        ["Skip to", "Newsletter", "Donate"],
    ),
    "en.wikipedia.org.tsne.html": (
        "developed by Laurens van der Maaten and Geoffrey Hinton",
        ["Jump to navigation", "Main page", "Privacy policy"],
    ),
    "github.blog.spiceland.html": (
        "Erin Spiceland is a Software Engineer for SpaceX",
        ["Careers"],
    ),
    "lemire.me.json.html": (
        "JSON is the ubiquitous data format on the Internet",
        ["Skip to", "Log in"],
    ),
    "nature.com.telescope.html": (
        "The world’s largest single-dish radio observatory is preparing to open to astronomers",
        ["Related Articles", "Skip to", "Subscribe"],
    ),
    "pcgamer.com.skyrim.html": (
        "In Skyrim, a mage is an unstoppable storm of destruction",
        ["Privacy policy", "Skip to", "Subscribe"],
    ),
    "phys.org.tool.html": (
        "has found evidence in small a cutting tool of Neanderthals using birch tar",
        ["Terms of Use", "Newsletter", "Follow us"],
    ),
    "reuters.com.parasite.html": (
        "South Korean thriller “Parasite” was the upset winner at the Screen Actors Guild",
        ["Terms of Use", "Newsletter"],
    ),
    "salon.com.emissions.html": (
        "total emissions fell 2 percent compared with the year before",
        ["Related Articles", "Advertisement", "All rights reserved"],
    ),
    "theverge.com.ios13.html": (
        "makes it look like you’re staring directly at your front-facing camera",
        ["Privacy Policy", "Terms of Use", "Log in"],
    ),
}


@pytest.fixture(scope="module")
def site(shared_dir):
    pages = {f"/{name}": (shared_dir / "data" / "pages" / name).read_bytes() for name in PAGES}

    async def handle(request: Request) -> Reply:
        body = pages.get(request.path)
        return Reply(body=body) if body else Reply(status=404)

    with LoopbackServer(handle) as server:
        yield server


def _browse(site: LoopbackServer, names: list[str], **overrides) -> list[dict]:
    config = ToolsConfig(allow_hosts=("127.0.0.1",), window_chars=100_000, **overrides)

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            call = ToolCall("browse_webpage", {"url_list": [f"{site.url}/{n}" for n in names]})
            return json.loads(await tools.execute(call, ToolSession(question="")))

    return asyncio.run(scenario())


@pytest.mark.parametrize("name", sorted(PAGES))
def test_browse_returns_the_article_without_boilerplate(site, name):
    sentence, boilerplate = PAGES[name]
    (page,) = _browse(site, [name], extract_workers=0)
    text = page["pages"][0]
    assert sentence in text
    for chrome in boilerplate:
        assert chrome not in text, f"{chrome!r} leaked into the text of {name}"
    assert page["title"]


def test_worker_processes_extract_exactly_what_the_inline_extractor_does(site):
    names = sorted(PAGES)
    in_pool = _browse(site, names, extract_workers=2)
    inline = _browse(site, names, extract_workers=0)
    assert in_pool == inline
    assert all("error" not in page for page in in_pool)


def test_a_dead_extraction_worker_costs_one_page_and_is_replaced(site):
    config = ToolsConfig(allow_hosts=("127.0.0.1",), extract_workers=1, memory_cache_entries=0)
    call = ToolCall("browse_webpage", {"url_list": [f"{site.url}/blog.python.org.html"]})

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            for worker in tools._extractor._all:
                worker.kill()
                await worker.wait()
            crashed = json.loads(await tools.execute(call, ToolSession("")))
            recovered = json.loads(await tools.execute(call, ToolSession("")))
            return crashed, recovered

    (crashed,), (recovered,) = asyncio.run(scenario())
    assert "extraction crashed" in crashed["error"]
    assert PAGES["blog.python.org.html"][0] in recovered["pages"][0]
