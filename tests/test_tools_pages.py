"""Browsing real saved web pages, served from loopback, returns the article and not the chrome."""

import asyncio
import json
import os
import signal
import time

import pytest
from loopback import LoopbackServer, Reply, Request

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, workers
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.fetch import Fetched

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

_SENTENCES = " ".join(f"Sentence {i} tells of the river delta and its trade." for i in range(12))
NAVIGATION_PAGE = (
    "<html><body><div class='nav'><a href='/'>Home</a> <a href='/a'>About</a></div>"
    f"<div>{_SENTENCES}</div><div>{_SENTENCES}</div></body></html>"
).encode()
"""A page whose links only trafilatura's fallback comparison (skipped by fast extraction) drops."""


@pytest.fixture(scope="module")
def site(data_dir):
    pages = {f"/{name}": (data_dir / "pages" / name).read_bytes() for name in PAGES}
    pages["/navigation.html"] = NAVIGATION_PAGE

    async def handle(request: Request) -> Reply:
        if request.path == "/notes.txt":
            return Reply(body=b"plain notes", content_type="text/plain")
        body = pages.get(request.path)
        return Reply(body=body) if body else Reply(status=404)

    with LoopbackServer(handle) as server:
        yield server


def _browse(site: LoopbackServer, names: list[str], **overrides) -> list[dict]:
    config = ToolsConfig(allow_hosts=(site.authority,), window_chars=100_000, **overrides)

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


def test_fast_extraction_skips_the_fallback_comparison_in_workers_and_in_threads(site):
    for extract_workers in (0, 1):
        (full,) = _browse(site, ["navigation.html"], extract_workers=extract_workers)
        (fast,) = _browse(
            site, ["navigation.html"], extract_workers=extract_workers, fast_extraction=True
        )
        assert full["pages"][0].startswith("Sentence 0 tells")
        assert fast["pages"][0].startswith("Home\nAbout\nSentence 0 tells")


def test_fast_extraction_reads_the_real_pages_as_the_full_cascade_does(site):
    names = sorted(PAGES)
    assert _browse(site, names, extract_workers=0, fast_extraction=True) == _browse(
        site, names, extract_workers=0
    )


def test_a_dead_extraction_worker_is_replaced_and_pages_keep_coming(site):
    config = ToolsConfig(allow_hosts=(site.authority,), extract_workers=1, memory_cache_chars=0)
    call = ToolCall("browse_webpage", {"url_list": [f"{site.url}/blog.python.org.html"]})

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            (worker,) = tools._extractor._workers
            worker.process.kill()
            await worker.process.wait()
            during = json.loads(await tools.execute(call, ToolSession("")))
            for _ in range(100):  # the replacement starts in the background
                if tools._extractor._workers:
                    break
                await asyncio.sleep(0.05)
            (replacement,) = tools._extractor._workers
            after = json.loads(await tools.execute(call, ToolSession("")))
            return during, after, worker.process.pid != replacement.process.pid

    (during,), (after,), replaced = asyncio.run(scenario())
    sentence = PAGES["blog.python.org.html"][0]
    assert sentence in during["pages"][0] and sentence in after["pages"][0]
    assert replaced


def test_a_page_that_takes_too_long_to_extract_is_given_up_and_the_worker_survives(site):
    config = ToolsConfig(
        allow_hosts=(site.authority,), extract_workers=1, extract_timeout=0.02, window_chars=10**6
    )
    slow = ToolCall("browse_webpage", {"url_list": [f"{site.url}/pcgamer.com.skyrim.html"]})
    quick = ToolCall("browse_webpage", {"url_list": [f"{site.url}/notes.txt"]})

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            (worker,) = tools._extractor._workers
            given_up = json.loads(await tools.execute(slow, ToolSession("")))
            fine = json.loads(await tools.execute(quick, ToolSession("")))
            return given_up, fine, tools._extractor._workers == [worker]

    (given_up,), (fine,), same_worker = asyncio.run(scenario())
    assert "took longer than 0.02 s" in given_up["error"]
    assert fine["pages"] == ["plain notes"] and same_worker


def test_workers_that_never_get_ready_are_killed_and_pages_are_extracted_in_a_thread(
    site, monkeypatch
):
    monkeypatch.setattr(workers, "STARTUP_S", 0.001)  # no worker imports that fast
    config = ToolsConfig(allow_hosts=(site.authority,), extract_workers=2)
    call = ToolCall("browse_webpage", {"url_list": [f"{site.url}/blog.python.org.html"]})

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            return tools._extractor._workers, json.loads(await tools.execute(call, ToolSession("")))

    alive, (page,) = asyncio.run(scenario())
    assert alive == [] and PAGES["blog.python.org.html"][0] in page["pages"][0]


def test_a_hung_worker_is_killed_its_page_fails_and_the_pages_behind_it_are_read(site):
    """SIGSTOP freezes the worker as a parser stuck in C would (its alarm cannot fire)."""
    config = ToolsConfig(allow_hosts=(site.authority,), extract_workers=1, extract_timeout=0.2)
    names = ["blog.python.org.html", "creativecommons.org.html"]
    calls = [ToolCall("browse_webpage", {"url_list": [f"{site.url}/{n}"]}) for n in names]

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            (worker,) = tools._extractor._workers
            os.kill(worker.process.pid, signal.SIGSTOP)
            started = time.monotonic()
            texts = await asyncio.gather(*(tools.execute(c, ToolSession("")) for c in calls))
            seconds = time.monotonic() - started
            return [json.loads(t)[0] for t in texts], seconds, await worker.process.wait()

    (hung, behind), seconds, exit_code = asyncio.run(scenario())
    assert hung["error"].endswith("blog.python.org.html took longer than 1.4 s")  # 2 x 0.2 + 1
    assert PAGES["creativecommons.org.html"][0] in behind["pages"][0]
    assert exit_code == -signal.SIGKILL and seconds < 3


def test_extraction_in_a_thread_is_given_up_after_the_timeout(site):
    config = ToolsConfig(
        allow_hosts=(site.authority,), extract_workers=0, extract_timeout=0.02, window_chars=10**6
    )
    call = ToolCall("browse_webpage", {"url_list": [f"{site.url}/pcgamer.com.skyrim.html"]})

    async def scenario():
        async with ToolExecutor(config, search=False) as tools:
            return json.loads(await tools.execute(call, ToolSession("")))

    (page,) = asyncio.run(scenario())
    assert page["error"].endswith("pcgamer.com.skyrim.html took longer than 0.02 s")


def test_workers_run_nicer_than_the_event_loop():
    async def scenario():
        extractor = workers.Extractor(1)
        await extractor.start()
        (worker,) = extractor._workers
        niceness = os.getpriority(os.PRIO_PROCESS, worker.process.pid)
        await extractor.close()
        return niceness

    assert asyncio.run(scenario()) == os.getpriority(os.PRIO_PROCESS, 0) + workers.NICENESS


def test_workers_run_this_dr_jax_whatever_the_current_directory_holds(tmp_path, monkeypatch):
    """`python -c` looks in the current directory first: another checkout there must not be what
    the workers run."""
    (tmp_path / "dr_jax").mkdir()
    (tmp_path / "dr_jax" / "__init__.py").write_text("raise ImportError('the wrong dr_jax')\n")
    monkeypatch.chdir(tmp_path)
    page = Fetched(
        "http://x.org/", "text/html", None, b"<html><body><p>" + b"words " * 60 + b"</p>"
    )

    async def scenario():
        extractor = workers.Extractor(1)
        await extractor.start()
        alive = len(extractor._workers)
        document = await extractor.extract(page)
        await extractor.close()
        return alive, document.text

    alive, text = asyncio.run(scenario())
    assert alive == 1 and text.startswith("words words")
