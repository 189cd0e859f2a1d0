"""Bytes to readable text: HTML via trafilatura, PDF via pypdf, plain text as is.

Extraction is CPU-bound (tens of ms per page), so `Extractor` runs it in worker processes and
the event loop that drives hundreds of trajectories never stalls.
"""

import asyncio
import contextlib
import io
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import lxml.html
import pypdf
import trafilatura

from dr_jax.tools.errors import ToolError
from dr_jax.tools.fetch import Fetched

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("application/json", "application/xml", "text/xml")


@dataclass(frozen=True)
class Document:
    """The readable part of a page."""

    url: str
    title: str
    text: str


def _html_title(tree: lxml.html.HtmlElement) -> str:
    for xpath in ('//meta[@property="og:title"]/@content', "//title/text()", "//h1//text()"):
        found = [t.strip() for t in tree.xpath(xpath) if t.strip()]
        if found:
            return " ".join(found[0].split())
    return ""


def _from_html(body: bytes, url: str, text_format: str) -> tuple[str, str]:
    tree = trafilatura.load_html(body)
    if tree is None:
        raise ToolError("unreadable", f"{url} is not parseable HTML")
    title = _html_title(tree)
    text = trafilatura.extract(
        tree,
        url=url,
        output_format="markdown" if text_format == "markdown" else "txt",
        include_comments=False,
        include_tables=True,
    )
    return title, text or ""


def _from_pdf(body: bytes, url: str) -> tuple[str, str]:
    try:
        reader = pypdf.PdfReader(io.BytesIO(body))
        title = str((reader.metadata or {}).get("/Title") or "")
        text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except Exception as e:  # pypdf raises many types on broken files
        raise ToolError("unreadable", f"{url} is a PDF that could not be read: {e}") from None
    return title, text


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def extract_document(fetched: Fetched, text_format: str = "markdown") -> Document:
    """Readable text of a fetched body, chosen by media type (sniffed when it is missing).

    Binary formats other than PDF are refused with a ToolError the model can read.
    """
    media, body, url = fetched.media_type, fetched.body, fetched.url
    head = body[:1024].lstrip().lower()
    if media == "application/pdf" or body.startswith(b"%PDF-"):
        title, text = _from_pdf(body, url)
    elif b"\x00" in body[:8192]:
        raise ToolError("unsupported", f"{url} is binary content ({media or 'unknown type'})")
    elif media in _HTML_TYPES or (not media and head.startswith((b"<!doctype html", b"<html"))):
        title, text = _from_html(body, url, text_format)
    elif media.startswith("text/") or media in _TEXT_TYPES or not media:
        title, text = "", _decode(body, fetched.charset)
    else:
        raise ToolError("unsupported", f"{url} is {media} content, which cannot be read as text")
    text = text.strip()
    if not text:
        raise ToolError("empty", f"{url} has no readable text")
    return Document(url=url, title=title, text=text)


def split_windows(text: str, window_chars: int) -> list[str]:
    """Cut `text` into windows of at most `window_chars` characters, each ending at a paragraph
    break, else at whitespace, found in its second half (so words are never split)."""
    windows, start = [], 0
    while start < len(text):
        end = start + window_chars
        if end < len(text):
            half = start + window_chars // 2
            paragraph = text.rfind("\n\n", half, end)
            space = max(text.rfind(" ", half, end), text.rfind("\n", half, end))
            end = paragraph if paragraph > 0 else space if space > 0 else end
        window = text[start:end].strip()
        if window:
            windows.append(window)
        start = end
    return windows


def _extract_reply(fetched: Fetched, text_format: str) -> tuple[bool, Document | ToolError]:
    """(True, document) or (False, the ToolError to observe); never raises."""
    try:
        return True, extract_document(fetched, text_format)
    except ToolError as e:
        return False, e
    except Exception as e:  # a parser bug on some page must not take the worker down
        return False, ToolError("unreadable", f"{fetched.url}: extraction failed ({e!r})")


class _Overtime(BaseException):
    """Raised by the worker's alarm; a BaseException so no `except Exception` swallows it."""


def _overtime(signum: int, frame: object) -> None:
    raise _Overtime


def serve_stdio() -> None:
    """Worker loop: 8-byte length + pickle of (Fetched, text_format, seconds) in on stdin, the
    same framing of `_extract_reply` out on stdout, in request order. A page that takes longer
    than `seconds` is abandoned by an alarm. Pickle is safe here: both ends are ours."""
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the replies
    signal.signal(signal.SIGALRM, _overtime)
    while header := requests.read(8):
        fetched, text_format, seconds = pickle.loads(requests.read(int.from_bytes(header, "big")))
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            reply = _extract_reply(fetched, text_format)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _Overtime:
            message = f"extracting {fetched.url} took longer than {seconds:g} s"
            reply = (False, ToolError("timeout", message))
        data = pickle.dumps(reply)
        replies.write(len(data).to_bytes(8, "big") + data)
        replies.flush()


class _Worker:
    """One extraction subprocess. Requests are pipelined (written without waiting for earlier
    replies) and answered in order, so a busy worker finds its next page already queued."""

    def __init__(self, process: asyncio.subprocess.Process, on_exit: Callable[["_Worker"], None]):
        self.process = process
        self.waiting: deque[asyncio.Future] = deque()
        self._on_exit = on_exit
        self._reader = asyncio.create_task(self._read_replies())

    async def _read_replies(self) -> None:
        try:
            while True:
                size = int.from_bytes(await self.process.stdout.readexactly(8), "big")
                reply = pickle.loads(await self.process.stdout.readexactly(size))
                future = self.waiting.popleft()
                if not future.done():  # its caller may have given up
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in self.waiting:
                if not future.done():
                    future.set_result((False, ToolError("extract", "text extraction crashed")))
            self.waiting.clear()
            self._on_exit(self)

    async def extract(
        self, fetched: Fetched, text_format: str, seconds: float
    ) -> tuple[bool, Document | ToolError]:
        payload = pickle.dumps((fetched, text_format, seconds))
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.process.stdin.write(len(payload).to_bytes(8, "big") + payload)
        await self.process.stdin.drain()
        return await future

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


class Extractor:
    """Runs `extract_document` in `workers` child processes (0: in a thread of this process).

    The workers are plain subprocesses spoken to over pipes by the event loop itself: no
    helper threads contend for the GIL with the loop, nothing is forked from a parent that
    may hold JAX threads, and no `__main__` guard is needed. Each page goes to the worker
    with the fewest pages queued; a worker that dies is replaced, and while none is alive
    pages are extracted in a thread.
    """

    def __init__(self, workers: int, timeout: float = 30.0) -> None:
        self._size = workers
        self._timeout = timeout
        self._workers: list[_Worker] = []
        self._spawning: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Start the workers now, so the first page does not pay for process start-up."""
        await asyncio.gather(*(self._spawn() for _ in range(self._size)))

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from dr_jax.tools.extract import serve_stdio; serve_stdio()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._workers.append(_Worker(process, self._replace))

    def _replace(self, worker: _Worker) -> None:
        if worker in self._workers:  # not when closing
            self._workers.remove(worker)
            task = asyncio.create_task(self._spawn())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def extract(self, fetched: Fetched, text_format: str) -> Document:
        if self._workers:
            worker = min(self._workers, key=lambda w: len(w.waiting))
            try:
                ok, value = await worker.extract(fetched, text_format, self._timeout)
            except ConnectionError:
                ok, value = False, ToolError("extract", "text extraction crashed")
        else:
            ok, value = await asyncio.to_thread(_extract_reply, fetched, text_format)
        if not ok:
            raise value
        return value

    async def close(self) -> None:
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        workers, self._workers = self._workers, []
        await asyncio.gather(*(worker.close() for worker in workers))
