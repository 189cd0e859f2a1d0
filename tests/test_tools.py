"""Tool semantics: windows, observation formats, search rules, the reading agent,
the search backends and the command line."""

import ast
import asyncio
import json
import logging
from urllib.parse import urlsplit

import pytest
from loopback import LoopbackServer, Reply, Request

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, ToolsSetupError
from dr_jax.tools.__main__ import main
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.extract import split_windows
from dr_jax.tools.observations import (
    PageResult,
    QueryResult,
    browse_observation,
    search_observation,
)
from dr_jax.tools.reader import ReaderReply, parse_reply
from dr_jax.tools.search import SearchHit, build_index

# --------------------------------------------------------------------------------- windows


def test_windows_are_bounded_cut_on_whitespace_and_lose_no_words():
    text = " ".join(f"word{i}" for i in range(2000))
    windows = split_windows(text, 1000)
    assert all(len(w) <= 1000 for w in windows)
    assert " ".join(windows).split() == text.split()


def test_a_text_without_spaces_is_still_cut():
    assert [len(w) for w in split_windows("x" * 2500, 1000)] == [1000, 1000, 500]


# ------------------------------------------------------------------- DeepResearcher shapes


def _golden(data_dir, name: str) -> list:
    path = data_dir / "deepresearcher" / "signal" / name
    return json.loads(path.read_text())[0]["content"]


def test_search_observation_matches_deepresearcher_golden_payload(data_dir):
    golden = _golden(data_dir, "data_search.json")
    results = [
        QueryResult(
            item["search_query"],
            [
                SearchHit(hit["title"], hit["url"], hit["quick_summary"])
                for hit in item["web_page_info_list"]
            ],
        )
        for item in golden
    ]
    assert search_observation(results, "deepresearcher") == str(golden)


def test_browse_observation_matches_deepresearcher_golden_payload(data_dir):
    golden = _golden(data_dir, "data_read.json")
    pages = [
        PageResult(
            item["url"],
            pages=[(info["page_number"], info["page_summary"]) for info in item["information"]],
            notes=True,
        )
        for item in golden
    ]
    assert browse_observation(pages, "deepresearcher") == str(golden)


# --------------------------------------------------------------------- a small fake web


class FakeWeb:
    """SearXNG search (15 results per query), three long pages, an LLM reader that records
    its prompts and extracts the first sentence of each window, and a Serper stand-in."""

    def __init__(self) -> None:
        self.searches: list[str] = []
        self.prompts: list[str] = []
        self.serper_requests: list[Request] = []
        self.server = LoopbackServer(self.handle)

    async def handle(self, request: Request) -> Reply:
        if request.path == "/search":
            q = request.query["q"]
            self.searches.append(q)
            results = [
                {"title": f"{q} {i}", "url": f"{self.server.url}/page{i % 3}", "content": q}
                for i in range(15)
            ]
            body = {"query": q, "number_of_results": 15, "results": results}
            return Reply(body=json.dumps(body).encode(), content_type="application/json")
        if request.path.startswith("/page"):
            n = request.path[-1]
            paragraphs = "".join(
                f"<p>Page {n} window fact {i}. " + "filler words " * 30 + "</p>" for i in range(6)
            )
            html = f"<html><head><title>Page {n}</title></head><body><article>{paragraphs}"
            return Reply(body=(html + "</article></body></html>").encode())
        if request.path == "/v1/chat/completions":
            prompt = json.loads(request.body)["messages"][0]["content"]
            self.prompts.append(prompt)
            window = prompt.split("<window>\n", 1)[-1].split("<current_page_content>")[-1]
            fact = window.split(".")[0].strip()
            info, more = ("new_info", "read_next")
            if "<page_down>" in prompt:
                info, more = ("extracted_info", "page_down")
            text = f"<{info}>{fact}</{info}>\n<{more}>yes</{more}>"
            reply = {"choices": [{"message": {"content": text}}]}
            return Reply(body=json.dumps(reply).encode(), content_type="application/json")
        if request.path == "/v1/models":
            return Reply(body=b"{}", content_type="application/json")
        if request.path == "/serper":
            self.serper_requests.append(request)
            organic = [{"title": "Owl", "link": "https://owls.example/", "snippet": "hoot"}]
            return Reply(body=json.dumps({"organic": organic}).encode())
        return Reply(status=404)


@pytest.fixture(scope="module")
def web():
    fake = FakeWeb()
    with fake.server:
        yield fake


def _config(web: FakeWeb, **overrides) -> ToolsConfig:
    base = dict(
        search_backend="searxng",
        search_url=web.server.url,
        allow_hosts=(web.server.authority,),
        extract_workers=0,
        window_chars=500,
    )
    return ToolsConfig(**{**base, **overrides})


def _calls(config: ToolsConfig, calls: list[ToolCall], question: str = "Which facts?"):
    async def scenario():
        async with ToolExecutor(config) as tools:
            session = ToolSession(question=question)
            return [await tools.execute(call, session) for call in calls], session

    return asyncio.run(scenario())


def _search(*queries: str) -> ToolCall:
    return ToolCall("web_search", {"query": list(queries)})


def _browse(*urls: str) -> ToolCall:
    return ToolCall("browse_webpage", {"url_list": list(urls)})


# ------------------------------------------------------------------------- search rules


def test_only_the_first_three_queries_run_with_ten_results_each(web):
    web.searches.clear()
    (text,), _ = _calls(_config(web), [_search("a", "b", "c", "d", "e")])
    results = json.loads(text)
    assert [r["query"] for r in results] == ["a", "b", "c"]
    assert sorted(web.searches) == ["a", "b", "c", "test"]  # "test": the start-up probe
    assert all(len(r["results"]) == 10 for r in results)


def test_max_queries_and_top_k_are_configurable(web):
    (text,), _ = _calls(_config(web, max_queries=1, top_k=2), [_search("a", "b")])
    (result,) = json.loads(text)
    assert len(result["results"]) == 2


def test_browsing_is_limited_to_the_latest_search_when_asked(web):
    page0, page1 = f"{web.server.url}/page0", f"{web.server.url}/elsewhere"
    config = _config(web, browse_latest_search_only=True)
    (_, text), session = _calls(config, [_search("facts"), _browse(page0, page1)])
    ok, refused = json.loads(text)
    assert ok["pages"] and "not in the latest search" in refused["error"]
    assert session.latest_search[page0] == "facts"


def test_deepresearcher_mode_silently_skips_urls_outside_the_latest_search(web):
    config = _config(web, browse_latest_search_only=True, observation_format="deepresearcher")
    page0 = f"{web.server.url}/page0"
    (search, browse), _ = _calls(config, [_search("facts"), _browse(f"{page0}x", page0)])
    assert search.startswith("[{'search_query': 'facts', 'web_page_info_list': [{'quick_summary'")
    (item,) = ast.literal_eval(browse)  # a Python repr, as the original rendered it
    assert list(item) == ["information", "url"] and item["url"] == page0
    assert list(item["information"][0]) == ["page_number", "page_summary"]


# --------------------------------------------------------------------- the reading agent


def _reader(web: FakeWeb, **overrides) -> ToolsConfig:
    reader = dict(reader="llm", reader_url=f"{web.server.url}/v1", reader_model="fake")
    return _config(web, **{**reader, **overrides})


def test_reader_returns_new_notes_and_remembers_them_for_later_pages(web):
    web.prompts.clear()
    page0, page1 = f"{web.server.url}/page0", f"{web.server.url}/page1"
    calls = [_search("facts"), _browse(page0), _browse(page1)]
    (_, first, second), session = _calls(_reader(web, page_budget=2), calls)
    assert [n["info"] for n in json.loads(first)[0]["notes"]] == [
        "Page 0 window fact 0",
        "Page 0 window fact 1",
    ]
    assert json.loads(second)[0]["notes"][0]["info"] == "Page 1 window fact 0"
    # The first read's notes are the memory the reader sees when it reads the second page.
    assert "Page 0 window fact 1" in web.prompts[2] and "<query>facts</query>" in web.prompts[2]
    assert [note.page for note in session.notes] == [0, 1, 0, 1]


def test_browsing_a_page_again_continues_where_reading_stopped(web):
    page0 = f"{web.server.url}/page0"
    (_, first, again), _ = _calls(
        _reader(web, page_budget=2), [_search("facts"), _browse(page0), _browse(page0)]
    )
    assert [n["page"] for n in json.loads(first)[0]["notes"]] == [0, 1]
    assert [n["page"] for n in json.loads(again)[0]["notes"]] == [2, 3]


def test_a_deepresearcher_style_prompt_file_can_replace_the_prompt(web, tmp_path):
    prompt = tmp_path / "reader.txt"
    prompt.write_text(
        "Q: {main_question}\nSub: {sub_question}\nSo far: {context_so_far}\n"
        "Page {page_index} of {total_pages}\n<current_page_content>{page_content}"
        "</current_page_content>\nAnswer in <extracted_info> and <page_down>."
    )
    web.prompts.clear()
    config = _reader(web, page_budget=1, reader_prompt_file=str(prompt))
    (_, text), _ = _calls(config, [_search("facts"), _browse(f"{web.server.url}/page2")])
    assert json.loads(text)[0]["notes"] == [{"page": 0, "info": "Page 2 window fact 0"}]
    assert web.prompts[0].startswith("Q: Which facts?\nSub: facts\nSo far: \nPage 1 of ")


def test_deepresearcher_preset_renders_reader_notes_like_the_original(web):
    config = ToolsConfig.deepresearcher(
        search_backend="searxng",
        search_url=web.server.url,
        reader_url=f"{web.server.url}/v1",
        reader_model="fake",
        allow_hosts=(web.server.authority,),
        extract_workers=0,
        window_chars=500,
        page_budget=2,
    )
    page0 = f"{web.server.url}/page0"
    (_, browse), _ = _calls(config, [_search("facts"), _browse(page0)])
    assert ast.literal_eval(browse) == [  # a Python repr with sorted keys, pages from 0
        {
            "information": [
                {"page_number": 0, "page_summary": "Page 0 window fact 0"},
                {"page_number": 1, "page_summary": "Page 0 window fact 1"},
            ],
            "url": page0,
        }
    ]
    assert browse.startswith("[{'information': [{'page_number': 0, 'page_summary': 'Page 0")


@pytest.mark.parametrize(
    ("reply", "info", "read_next"),
    [
        ("<new_info>Born 1902.</new_info>\n<read_next>Yes.</read_next>", "Born 1902.", True),
        ("<extracted_info> a </extracted_info><page_down>no</page_down>", "a", False),
        ("<new_info>cut off mid-sentence", "cut off mid-sentence", False),
        ("<new_info>x</new_info> <read_next>", "x", False),
        ("I could not find anything.", "", False),
    ],
)
def test_reader_replies_are_parsed_leniently(reply, info, read_next):
    assert parse_reply(reply) == ReaderReply(info, read_next)


def test_reader_mode_none_returns_raw_windows_within_the_page_budget(web):
    (_, text), _ = _calls(
        _config(web, page_budget=2), [_search("facts"), _browse(f"{web.server.url}/page1")]
    )
    (page,) = json.loads(text)
    assert page["title"] == "Page 1" and page["first_page"] == 0
    assert len(page["pages"]) == 2 and page["total_pages"] > 2
    assert page["pages"][0].startswith("Page 1 window fact 0.")


# ------------------------------------------------------------------------------ backends


def test_local_bm25_backend_finds_and_serves_documents(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        {"id": "owl", "title": "Barn owl", "text": "The barn owl hunts mice at night."},
        {"id": "fox", "title": "Red fox", "text": "The red fox eats berries and rabbits."},
        {"id": "oak", "title": "Oak", "text": "Oaks are trees with acorns.", "url": "http://x/oak"},
    ]
    corpus.write_text("\n".join(json.dumps(d) for d in docs))
    assert build_index(corpus, tmp_path / "index") == 3
    config = ToolsConfig(search_backend="local", local_index=str(tmp_path / "index"))
    calls = [_search("what do foxes eat rabbits"), _browse("local:fox")]
    (search, browse), _ = _calls(config, calls)
    (result,) = json.loads(search)
    assert result["results"][0] == {
        "title": "Red fox",
        "url": "local:fox",
        "snippet": "The red fox eats berries and rabbits.",
    }
    assert json.loads(browse)[0]["pages"] == ["The red fox eats berries and rabbits."]


def test_serper_backend_sends_the_key_in_a_header_and_never_shows_it(web, monkeypatch, caplog):
    monkeypatch.setenv("TEST_SERPER_KEY", "sekret-123")
    config = ToolsConfig(
        search_backend="serper",
        search_url=f"{web.server.url}/serper",
        serper_key_env="TEST_SERPER_KEY",
        extract_workers=0,
    )
    with caplog.at_level(logging.DEBUG):

        async def scenario():
            async with ToolExecutor(config) as tools:
                text = await tools.execute(_search("owls"), ToolSession("q"))
                return text, repr(tools._backend), json.dumps(tools.metrics())

        text, backend_repr, metrics = asyncio.run(scenario())
    request = web.serper_requests[-1]
    assert request.headers["x-api-key"] == "sekret-123"
    assert json.loads(request.body) == {"q": "owls", "num": 10, "gl": "us", "hl": "en"}
    assert json.loads(text)[0]["results"][0]["url"] == "https://owls.example/"
    for shown in (text, backend_repr, metrics, caplog.text):
        assert "sekret" not in shown


def test_missing_serper_key_is_one_clear_start_up_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ToolsSetupError, match="NO_SUCH_KEY"):
        ToolExecutor(ToolsConfig(search_backend="serper", serper_key_env="NO_SUCH_KEY"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"search_url": "http://127.0.0.1:9"}, "does not answer"),
        ({"search_url": None}, "needs search_url"),
        (
            {
                "search_url": "{web}",
                "reader": "llm",
                "reader_url": "http://127.0.0.1:9/v1",
                "reader_model": "m",
            },
            "reader LLM .* is unreachable",
        ),
    ],
)
def test_unreachable_backends_fail_at_start_up(web, overrides, message):
    overrides = {
        k: v.format(web=web.server.url) if isinstance(v, str) else v for k, v in overrides.items()
    }
    config = ToolsConfig(**{"search_backend": "world", "extract_workers": 0, **overrides})

    async def scenario():
        async with ToolExecutor(config):
            pass

    with pytest.raises(ToolsSetupError, match=message):
        asyncio.run(scenario())


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="search_backend='bing' is unknown"):
        ToolsConfig(search_backend="bing")
    with pytest.raises(ValueError, match="needs reader_url and reader_model"):
        ToolsConfig.deepresearcher()
    with pytest.raises(ValueError, match="set cache_url"):
        ToolsConfig(replay=True)
    with pytest.raises(ValueError, match="call_timeout must be > 0"):
        ToolsConfig(call_timeout=0)
    preset = ToolsConfig.deepresearcher(reader_url="http://h/v1", reader_model="m")
    assert preset.browse_latest_search_only and preset.max_queries == 3 and preset.top_k == 10


def test_world_backend_finds_and_browses_the_evidence_page():
    from dr_jax.world import World, WorldServer

    world = World.generate(seed=0, size=50)
    question = world.questions[0]
    with WorldServer(world, host="127.0.0.1", port=0) as server:
        config = ToolsConfig(
            search_url=server.url,
            allow_hosts=(urlsplit(server.url).netloc,),
            extract_workers=0,
            top_k=3,
        )
        evidence = server.url + question.evidence[0]
        calls = [_search(question.question), _browse(evidence)]
        (_, browse), session = _calls(config, calls, question=question.question)
    assert evidence in session.latest_search
    assert question.answers[0] in json.loads(browse)[0]["pages"][0]


# ------------------------------------------------------------------------- command line


def test_cli_browse_prints_design_json(web, capsys):
    url = f"{web.server.url}/page0"
    allow = ["--allow-host", web.server.authority]
    assert main(["browse", url, *allow, "--window-chars", "400"]) == 0
    (page,) = json.loads(capsys.readouterr().out)
    assert page["url"] == url and page["title"] == "Page 0"
    assert page["pages"][0].startswith("Page 0 window fact 0.")


def test_cli_browse_refuses_loopback_unless_allowed(web, capsys):
    """Every URL refused: exit 1, and the error names the flag that allows the host."""
    assert main(["browse", f"{web.server.url}/page0"]) == 1
    error = json.loads(capsys.readouterr().out)[0]["error"]
    assert "loopback" in error and "--allow-host" in error and web.server.authority in error
    one_good = [
        f"{web.server.url}/page0",
        "http://10.0.0.1/x",
        "--allow-host",
        web.server.authority,
    ]
    assert main(["browse", *one_good]) == 0, "one page read is a success"


def test_cli_search_and_index(web, tmp_path, capsys):
    assert main(["search", "owls", "--backend", "searxng", "--url", web.server.url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["query"] == "owls"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "1", "title": "Owl", "text": "owls hoot"}) + "\n")
    assert main(["index", str(corpus), str(tmp_path / "ix")]) == 0
    capsys.readouterr()
    assert main(["search", "owls", "--index", str(tmp_path / "ix")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["url"] == "local:1"


def test_cli_reports_setup_errors_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    assert main(["search", "owls", "--backend", "serper"]) == 2
    assert "SERPER_API_KEY" in capsys.readouterr().err
    assert main(["search", "owls", "--url", "http://127.0.0.1:9"]) == 2
    assert "does not answer" in capsys.readouterr().err


def test_cli_help_explains_backends_and_environment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("world", "searxng", "serper", "local", "SERPER_API_KEY", "DR_JAX_SEARCH_URL"):
        assert word in out


def test_the_original_reading_prompt_works_as_a_prompt_file(web, data_dir, tmp_path):
    prompts = json.loads((data_dir / "deepresearcher" / "prompts.json").read_text())
    prompt_file = tmp_path / "deepresearcher_reader.txt"
    prompt_file.write_text(prompts["reading_agent_extract_prompt"])
    web.prompts.clear()
    config = _reader(web, page_budget=1, reader_prompt_file=str(prompt_file))
    (_, text), _ = _calls(config, [_search("facts"), _browse(f"{web.server.url}/page1")])
    assert json.loads(text)[0]["notes"][0]["info"] == "Page 1 window fact 0"
    assert "<main_question>\nWhich facts?\n</main_question>" in web.prompts[0]
    assert "<page_index>1</page_index>" in web.prompts[0]


@pytest.mark.parametrize(
    ("template", "fix"),
    [
        ("Read {page_text} for {question}: <new_info>", "unknown placeholder {page_text}"),
        ("Read {content} and reply {like: this} <new_info>", "write literal braces as {{ and }}"),
        ("Read {0} <new_info>", "not a str.format template"),
        ("Answer {question} in <new_info>", "never shows the page: put {content}"),
        ("Read {content} and summarise it.", "asks for no reply the parser reads"),
    ],
)
def test_a_broken_reader_prompt_file_is_refused_at_start_up(web, tmp_path, template, fix):
    prompt = tmp_path / "reader.txt"
    prompt.write_text(template)
    with pytest.raises(ToolsSetupError, match="reader_prompt_file") as refused:
        ToolExecutor(_reader(web, reader_prompt_file=str(prompt)))
    assert fix in str(refused.value)
    with pytest.raises(ToolsSetupError, match="cannot read reader_prompt_file"):
        ToolExecutor(_reader(web, reader_prompt_file=str(tmp_path / "missing.txt")))
