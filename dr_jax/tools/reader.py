"""The reading agent: an LLM pages through a document and keeps only what is new and relevant.

For each URL it reads window after window; each reply carries the new information (against the
trajectory's notes) and whether to read on. Reading always stops at the last window or after
`page_budget` windows, whatever the LLM says (the original could loop forever on its last page).
"""

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from dr_jax.tools.errors import ToolError, ToolsSetupError
from dr_jax.tools.fetch import raise_for_status, transport_errors
from dr_jax.tools.http import HttpClient

# The project's own reading prompt. A prompt file may replace it; it is filled with str.format
# and may use {question} {query} {memory} {page} {pages} {content} (page is 1-based), or the
# DeepResearcher names {main_question} {sub_question} {context_so_far} {page_index}
# {total_pages} {page_content}. Replies are read from <new_info>/<read_next> tags, or from
# DeepResearcher's <extracted_info>/<page_down>.
DEFAULT_PROMPT = """\
You help a researcher answer a question by reading one web page, one window of text at a time.

Research question:
<question>
{question}
</question>

The search query that found this page:
<query>
{query}
</query>

Notes the researcher already has (do not repeat them):
<memory>
{memory}
</memory>

Window {page} of {pages} of the page:
<window>
{content}
</window>

Write down every fact in this window that helps with the question or the query and is not \
already in the notes: names, numbers, dates, places, definitions, and any statement that \
contradicts the notes. Quote the page's wording where you can. If nothing in the window \
helps, leave the tag empty.

Then decide whether the following windows of this page are likely to hold more useful facts \
(for example, the window stops in the middle of a relevant section). Answer "no" when this is \
the last window.

Reply in exactly this form:
<new_info>...</new_info>
<read_next>yes or no</read_next>"""

_INFO_TAGS = ("new_info", "extracted_info")
_NEXT_TAGS = ("read_next", "page_down")


def _tag(text: str, names: tuple[str, ...]) -> str:
    """Content of the first of `names` present; an unclosed tag runs to the next tag or the end."""
    for name in names:
        match = re.search(rf"<{name}>(.*?)(?:</{name}>|<\w+>|$)", text, flags=re.DOTALL)
        if match:
            return match.group(1).strip()
    return ""


@dataclass(frozen=True)
class ReaderReply:
    info: str
    read_next: bool


def parse_reply(text: str) -> ReaderReply:
    return ReaderReply(
        info=_tag(text, _INFO_TAGS), read_next=_tag(text, _NEXT_TAGS).lower().startswith("yes")
    )


_PROBE = "\x00window\x00"


def load_prompt(path: str | None) -> str:
    """The reading prompt: the built-in one, or the template at `path`, checked now (at
    start-up, not on the first page browsed): it fills with the names above, shows the
    window, and asks for a reply tag the parser reads."""
    if path is None:
        return DEFAULT_PROMPT
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ToolsSetupError(f"cannot read reader_prompt_file {path!r}: {e.strerror}") from None
    fields = dict(question="?", query="?", memory="", page=0, pages=1)
    try:
        rendered = render_prompt(template, **fields, content=_PROBE)
    except KeyError as e:
        raise ToolsSetupError(
            f"reader_prompt_file {path!r} has an unknown placeholder {{{e.args[0]}}}: use "
            "{question} {query} {memory} {page} {pages} {content} or DeepResearcher's names "
            "(tools/reader.py), and write literal braces as {{ and }}"
        ) from None
    except (ValueError, IndexError) as e:
        raise ToolsSetupError(
            f"reader_prompt_file {path!r} is not a str.format template ({e}): write literal "
            "braces as {{ and }}"
        ) from None
    if _PROBE not in rendered:
        raise ToolsSetupError(
            f"reader_prompt_file {path!r} never shows the page: put {{content}} (or "
            "{page_content}) where the window goes"
        )
    if not any(f"<{tag}>" in template for tag in _INFO_TAGS):
        raise ToolsSetupError(
            f"reader_prompt_file {path!r} asks for no reply the parser reads: replies are read "
            "from <new_info>...</new_info> <read_next>yes|no</read_next> (or DeepResearcher's "
            "<extracted_info> and <page_down>)"
        )
    return template


def render_prompt(
    template: str, *, question: str, query: str, memory: str, page: int, pages: int, content: str
) -> str:
    """Fill `template` (either name set, see DEFAULT_PROMPT); `page` is 0-based here."""
    return template.format(
        question=question,
        query=query,
        memory=memory or "(none yet)",
        page=page + 1,
        pages=pages,
        content=content,
        main_question=question,
        sub_question=query,
        context_so_far=memory,
        page_index=page + 1,
        total_pages=pages,
        page_content=content,
    )


async def chat_completion(
    client: HttpClient,
    base_url: str,
    model: str,
    prompt: str,
    *,
    temperature: float,
    max_tokens: int,
    api_key: str | None,
    timeout: float,
) -> str:
    """One user message to an OpenAI-compatible `/chat/completions`; returns the reply text."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with transport_errors("reader LLM", timeout):
        async with asyncio.timeout(timeout):
            response = await client.request(
                "POST",
                base_url.rstrip("/") + "/chat/completions",
                json_body={
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": temperature,
                    "max_tokens": max_tokens,
                },
                headers=headers,
                timeout=timeout,
            )
    raise_for_status(response, "reader LLM")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ToolError("malformed", "reader LLM returned an unexpected response") from None
    if not isinstance(content, str):
        raise ToolError("malformed", "reader LLM returned no text")
    return content


@dataclass(frozen=True)
class Reading:
    """What one read of a page produced: (0-based page, new info) pairs and where it stopped."""

    notes: list[tuple[int, str]]
    next_window: int
    error: str | None = None


async def read_page(
    llm: Callable[[str], Awaitable[str]],
    template: str,
    *,
    question: str,
    query: str,
    memory: str,
    windows: list[str],
    start: int,
    budget: int,
) -> Reading:
    """Read `windows[start:]` in order until the LLM says stop, the last window, or `budget`.

    Notes found earlier in this read join the memory shown for later windows. An LLM failure
    ends the read, keeping what was found, with `error` set.
    """
    notes: list[tuple[int, str]] = []
    stop = min(len(windows), start + budget)
    page = start
    while page < stop:
        so_far = "\n\n".join([memory, *(text for _, text in notes)]).strip()
        prompt = render_prompt(
            template,
            question=question,
            query=query,
            memory=so_far,
            page=page,
            pages=len(windows),
            content=windows[page],
        )
        try:
            reply = parse_reply(await llm(prompt))
        except ToolError as e:
            return Reading(notes, page, f"reader failed on page {page}: {e}")
        if reply.info:
            notes.append((page, reply.info))
        page += 1
        if not reply.read_next:
            break
    return Reading(notes, page)
