"""The offline research world: determinism, answerability, search, HTTP serving and export."""

import json
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq
import pytest

from dr_jax.tools.extract import extract_document, split_windows
from dr_jax.tools.fetch import Fetched
from dr_jax.world import Question, World, WorldServer
from dr_jax.world.export import export_world
from dr_jax.world.index import page_text
from dr_jax.world.oracle import search_query
from dr_jax.world.pages import MAX_BACKLINKS, format_value
from dr_jax.world.questions import contains_words


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(seed=0)


def _extracted(world: World, path: str) -> str:
    """A page's text exactly as the browse tool's extractor produces it."""
    body = world.pages[path].encode()
    return extract_document(Fetched("http://127.0.0.1" + path, "text/html", "utf-8", body)).text


def test_same_seed_gives_byte_identical_pages_and_questions(world):
    again = World.generate(seed=0)
    assert again.pages == world.pages
    assert again.questions == world.questions


def test_another_seed_gives_another_world(world):
    other = World.generate(seed=1)
    assert set(other.pages) != set(world.pages)
    assert {q.question for q in other.questions}.isdisjoint({q.question for q in world.questions})


def test_default_world_is_demo_sized_with_held_out_splits(world):
    assert len(world.pages) >= 500
    assert len(world.split("train")) >= 500
    assert len(world.split("dev")) == len(world.split("test")) == 100
    texts = {s: {q.question for q in world.split(s)} for s in ("train", "dev", "test")}
    assert texts["train"].isdisjoint(texts["dev"] | texts["test"])
    assert texts["dev"].isdisjoint(texts["test"])
    assert len({q.id for q in world.questions}) == len(world.questions)


def test_no_train_question_reads_a_fact_that_a_held_out_question_needs(world):
    def facts(split):
        return {(r.path, r.fact) for q in world.split(split) for rnd in q.plan for r in rnd}

    assert facts("train").isdisjoint(facts("dev") | facts("test"))


def test_every_kind_and_hop_count_is_present_in_each_held_out_split(world):
    expected = {
        "world_1hop": 1,
        "world_2hop_bridge": 2,
        "world_3hop_bridge": 3,
        "world_4hop_bridge": 4,
        "world_2hop_comparison": 2,
        "world_4hop_comparison": 4,
    }
    for split in ("dev", "test"):
        kinds = {q.data_source: q.hops for q in world.split(split)}
        assert kinds == expected


def test_gold_answer_is_on_an_evidence_page_and_not_in_the_question(world):
    for q in world.questions:
        assert q.answers and all(a.strip() for a in q.answers)
        assert not any(contains_words(q.question, a) for a in q.answers), q
        assert len(q.evidence) == q.hops
        assert any(contains_words(page_text(world.pages[p]), q.answers[0]) for p in q.evidence), q


def test_every_fact_of_a_plan_is_stated_on_its_page(world):
    for q in world.questions:
        for read in (r for round_ in q.plan for r in round_):
            assert contains_words(page_text(world.pages[read.path]), read.value), (q, read)


def test_answers_are_short(world):
    assert max(len(a.split()) for q in world.questions for a in q.answers) <= 4


def test_near_duplicate_names_are_one_letter_apart_and_facts_differ(world):
    twins = [e for e in world.entities if e.twin is not None]
    assert len(twins) >= 0.05 * len(world.entities)
    for e in twins:
        source = world.entities[e.twin]
        assert e.name != source.name and len(e.name) == len(source.name)
        assert sum(a != b for a, b in zip(e.name, source.name, strict=True)) == 1
        numbers = [k for k, v in e.attrs.items() if isinstance(v, int)]
        assert all(e.attrs[k] != source.attrs[k] for k in numbers)
    assert len({e.name for e in world.entities}) == len(world.entities)


def test_pages_pass_through_the_browse_extractor_with_facts_intact(world):
    for e in world.entities[::5]:
        text = _extracted(world, e.path)
        assert text.startswith(f"# {e.name}")
        for key, value in e.attrs.items():
            assert contains_words(text, format_value(key, value)), (e.name, key)
        for target in e.rels.values():
            assert contains_words(text, world.entities[target].name), e.name
        assert "Privacy policy" not in text and "Most read" not in text  # boilerplate stripped


def test_events_are_news_reports_and_the_rest_encyclopedia_articles(world):
    for e in world.entities:
        page = world.pages[e.path]
        if e.kind == "event":
            assert e.path.startswith("/news/") and 'class="byline"' in page
            assert 'class="infobox"' not in page
        else:
            assert e.path.startswith("/wiki/") and 'class="infobox"' in page


def test_pages_name_the_entities_that_point_at_them(world):
    works_by: dict[int, list[str]] = {}
    for e in world.entities:
        if e.kind == "work":
            works_by.setdefault(e.rels["creator"], []).append(e.name)
    for person, works in works_by.items():
        text = page_text(world.pages[world.entities[person].path])
        assert all(contains_words(text, w) for w in works[:MAX_BACKLINKS]), text


def test_long_pages_state_their_deferred_fact_only_beyond_the_first_8000_chars(world):
    long_pages = [e for e in world.entities if e.long]
    assert len(long_pages) >= 0.05 * len(world.entities)
    assert any(e.long > 40_960 for e in long_pages)
    for e in long_pages:
        text = _extracted(world, e.path)
        value = (
            world.entities[e.rels[e.deferred]].name
            if e.deferred in e.rels
            else format_value(e.deferred, e.attrs[e.deferred])
        )
        first, *rest = split_windows(text, 8_000)
        assert rest and not contains_words(first, value), e.name
        assert contains_words(" ".join(rest), value), e.name


def test_search_ranks_every_page_the_oracle_needs_in_the_top_10(world):
    for q in world.questions:
        for read in (r for round_ in q.plan for r in round_):
            urls = [hit["url"] for hit in world.index.search(search_query(read), k=10)]
            assert read.path in urls, (q.question, search_query(read))


def test_server_serves_pages_and_searxng_json_over_http(world):
    with WorldServer(world) as server:
        assert server.url.startswith("http://127.0.0.1:")
        path = world.entities[7].path
        page = httpx.get(server.url + path)
        assert page.status_code == 200 and page.text == world.pages[path]
        assert page.headers["content-type"].startswith("text/html")
        query = f"{world.entities[7].name} born"
        found = httpx.get(
            server.url + "/search", params={"q": query, "format": "json", "count": 3}
        ).json()
        assert found["query"] == query
        assert found["number_of_results"] == len(found["results"]) == 3
        first = found["results"][0]
        assert first["url"] == server.url + path and first["title"] == world.entities[7].name
        assert world.entities[7].name in first["content"]
        listing = httpx.get(server.url + "/search", params={"q": query})
        assert listing.headers["content-type"].startswith("text/html")
        assert f'href="{server.url + path}"' in listing.text
        assert httpx.get(server.url + "/wiki/Nowhere.html").status_code == 404
        assert httpx.get(server.url + "/search", params={"format": "json"}).status_code == 400
        url = server.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + path)


def test_search_with_only_unknown_words_returns_no_results(world):
    assert world.index.search("zzqx qqzv", k=10) == []


def test_server_starts_in_seconds_and_restarts():
    started = time.perf_counter()
    world = World.generate(seed=3)
    server = WorldServer(world).start()
    try:
        assert time.perf_counter() - started < 10
        assert httpx.get(server.url + "/").status_code == 200
    finally:
        server.stop()
    with server:
        assert httpx.get(server.url + "/").status_code == 200


def test_export_writes_deepresearcher_parquet_jsonl_and_pages(world, tmp_path, data_dir):
    out = export_world(world, tmp_path)
    reference = pq.read_schema(data_dir / "deepresearcher" / "dev.parquet")
    for split in ("train", "dev", "test"):
        table = pq.read_table(out / f"{split}.parquet")
        assert table.schema.remove_metadata().equals(reference.remove_metadata())
        rows = table.to_pylist()
        questions = world.split(split)
        assert [r["prompt"][0]["content"] for r in rows] == [q.question for q in questions]
        assert rows[0]["prompt"][0]["role"] == "user"
        assert rows[0]["reward_model"]["ground_truth"].split("<|answer_split|>") == (
            questions[0].answers
        )
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert Question(**json.loads(lines[0]), plan=questions[0].plan) == questions[0]
    assert len(list((out / "pages").glob("*.html"))) == len(world.pages)


def test_cli_export_is_deterministic(tmp_path):
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "dr_jax.world", "export", "--seed", "5", "--size", "tiny",
             "--out", str(tmp_path / name)],
            check=True, capture_output=True,
        )  # fmt: skip
    for name in (
        "dev.jsonl",
        "train.jsonl",
        "pages/" + next((tmp_path / "a/pages").iterdir()).name,
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_size_names_the_fix():
    with pytest.raises(ValueError, match="tiny"):
        World.generate(seed=0, size="huge")
    with pytest.raises(ValueError, match="split"):
        World.generate(seed=0, size="tiny").split("validation")


def test_larger_worlds_hold_out_a_twelfth_of_their_questions():
    big = World.generate(0, 1200)
    assert len(big.split("dev")) == len(big.split("test")) == 200
    assert sum(q.data_source == "world_1hop" for q in big.split("dev")) == 50
