"""Text extraction off the event loop, in worker processes driven over pipes.

Extraction is CPU-bound (ms to tens of ms per page), so the loop that drives hundreds of
trajectories hands it to plain subprocesses: no helper threads contend with the loop for the
GIL, nothing is forked from a parent that may hold JAX threads, and no `__main__` guard is
needed in the caller's script.
"""

import asyncio
import contextlib
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dr_jax.tools.errors import ToolError
from dr_jax.tools.extract import Document, extract_document
from dr_jax.tools.fetch import Fetched

READY = b"ready\n"
"""A worker's first line: its imports (about 0.5 s of CPU) and warm-up are done; it takes pages."""
STARTUP_S = 60.0
"""A worker not ready after this long (a hung import) is killed; pages go to a thread."""
NICENESS = 5
"""Workers run this much nicer than the event loop: a page may wait a little longer for its
text, but the loop, which drives every trajectory, does not wait for pages (measured in
benchmarks/tools.py on 2 busy cores: efficiency 0.71-0.79 -> 0.82-0.84)."""
HANG_GRACE_S = 1.0
"""A worker that has not answered 2 x the extraction timeout + this after it started a page is
killed and replaced: its alarm interrupts Python code, not a parser stuck in C."""


_WARM_UP = Fetched(
    "http://warm-up.invalid/",
    "text/html",
    None,
    b"<html><head><title>Warm-up</title></head><body><article>"
    + b"<p>A paragraph long enough to be kept as the main text of this page.</p>" * 4
    + b"</article></body></html>",
)
"""Extracted before a worker says it is ready: a process's first page costs 4x a later one
(lazy set-up in lxml and trafilatura), and the first pages of a run come all at once."""

_WORKER_MAIN = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
    "from dr_jax.tools.workers import serve_stdio; serve_stdio()"
)
"""A worker's program: this very dr_jax, not one that `python -c` would find first in the
current directory (another checkout, say)."""

_Reply = tuple[bool, Document | ToolError]


def _overtime(url: str, seconds: float) -> ToolError:
    return ToolError("timeout", f"extracting {url} took longer than {seconds:g} s")


def _extract_reply(fetched: Fetched, text_format: str, fast: bool) -> _Reply:
    """(True, document) or (False, the ToolError to observe); never raises."""
    try:
        return True, extract_document(fetched, text_format, fast=fast)
    except ToolError as e:
        return False, e
    except Exception as e:  # a parser bug on some page must not take the worker down
        return False, ToolError("unreadable", f"{fetched.url}: extraction failed ({e!r})")


class _Alarm(BaseException):
    """Raised by the worker's alarm; a BaseException so no `except Exception` swallows it."""


def _alarm(signum: int, frame: object) -> None:
    raise _Alarm


def serve_stdio() -> None:
    """Worker loop, at NICENESS: "ready" once it is warmed up, then 8-byte length + pickle of
    (Fetched, (text_format, fast), seconds) in on stdin, the same framing of `_extract_reply` out on
    stdout, in request order. A page that takes longer than `seconds` is abandoned by an alarm.
    Pickle is safe here: both ends are ours."""
    os.nice(NICENESS)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the replies
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; we exit on EOF
    _extract_reply(_WARM_UP, "markdown", False)
    replies.write(READY)
    replies.flush()
    while header := requests.read(8):
        fetched, how, seconds = pickle.loads(requests.read(int.from_bytes(header, "big")))
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            reply = _extract_reply(fetched, *how)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _Alarm:
            reply = (False, _overtime(fetched.url, seconds))
        data = pickle.dumps(reply)
        replies.write(len(data).to_bytes(8, "big") + data)
        replies.flush()


class _Worker:
    """One extraction subprocess. Requests are pipelined (written without waiting for earlier
    replies) and answered in order, so a busy worker finds its next page already queued.

    The page at the head of the queue is the one being extracted: it has `limit` seconds from
    when the worker started it, after which the worker is killed. A worker that dies (or is
    killed) fails that page; the pages queued behind it get None, to be extracted elsewhere.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        on_exit: Callable[["_Worker"], None],
        limit: float,
    ) -> None:
        self.process = process
        self.waiting: deque[tuple[asyncio.Future, str]] = deque()
        """(reply, URL) of each page sent, in order."""
        self._on_exit = on_exit
        self._limit = limit
        self._clock: asyncio.Timeout | None = None  # set while a reply is awaited
        self._reader = asyncio.create_task(self._read_replies())

    def _start_clock(self) -> None:
        """The head page's `limit` starts now (when it was queued behind none, or when the
        reply before it arrived)."""
        if self._clock is not None and self._clock.when() is None and self.waiting:
            self._clock.reschedule(asyncio.get_running_loop().time() + self._limit)

    def _answer(self, reply: _Reply | None) -> None:
        future, _ = self.waiting.popleft()
        if not future.done():  # its caller may have given up
            future.set_result(reply)

    async def _read_replies(self) -> None:
        stdout = self.process.stdout
        try:
            while True:
                async with asyncio.timeout(None) as self._clock:
                    self._start_clock()
                    size = int.from_bytes(await stdout.readexactly(8), "big")
                    reply = pickle.loads(await stdout.readexactly(size))
                self._clock = None
                self._answer(reply)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self._answer((False, _overtime(self.waiting[0][1], self._limit)))
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.waiting:
                self._answer((False, ToolError("extract", "text extraction crashed")))
        finally:
            self._clock = None
            while self.waiting:
                self._answer(None)
            self._on_exit(self)

    async def extract(
        self, fetched: Fetched, how: tuple[str, bool], seconds: float
    ) -> _Reply | None:
        """The worker's reply for the page; None when it died before starting it."""
        payload = pickle.dumps((fetched, how, seconds))
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((future, fetched.url))
        self._start_clock()
        try:
            self.process.stdin.write(len(payload).to_bytes(8, "big") + payload)
            await self.process.stdin.drain()
        except ConnectionError:
            return None
        return await future

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


class Extractor:
    """Runs `extract_document` (with `text_format` and `fast`) in `workers` child processes
    (0: in a thread of this process).

    Each page goes to the worker with the fewest pages queued; a worker that dies, or is
    killed for hanging, is replaced, and while none is alive pages are extracted in a thread.
    Every page gets at most `timeout` seconds: a worker's alarm, or the wait for a thread (a
    thread cannot be stopped: it finishes in the background).
    """

    def __init__(
        self,
        workers: int,
        timeout: float = 30.0,
        *,
        text_format: str = "markdown",
        fast: bool = False,
    ) -> None:
        self._size = workers
        self._timeout = timeout
        self._how = (text_format, fast)
        self._workers: list[_Worker] = []
        self._spawning: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Start the workers and wait until they are ready, so neither the first pages nor the
        calls running meanwhile pay for their start-up."""
        await asyncio.gather(*(self._spawn() for _ in range(self._size)))

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_MAIN,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(STARTUP_S):
                ready = await process.stdout.readline() == READY
        except TimeoutError:
            ready = False
        if not ready:  # it died or hung starting: pages go to a thread
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return
        limit = 2 * self._timeout + HANG_GRACE_S
        self._workers.append(_Worker(process, self._replace, limit))

    def _replace(self, worker: _Worker) -> None:
        if worker in self._workers:  # not when closing
            self._workers.remove(worker)
            task = asyncio.create_task(self._spawn())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def extract(self, fetched: Fetched) -> Document:
        """The page's document; raises ToolError. A worker, else another one (the first died
        before it reached the page), else a thread."""
        ok, value = (
            await self._in_worker(fetched)
            or await self._in_worker(fetched)
            or await self._in_thread(fetched)
        )
        if not ok:
            raise value
        return value

    async def _in_worker(self, fetched: Fetched) -> _Reply | None:
        if not self._workers:
            return None
        worker = min(self._workers, key=lambda w: len(w.waiting))
        return await worker.extract(fetched, self._how, self._timeout)

    async def _in_thread(self, fetched: Fetched) -> _Reply:
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.to_thread(_extract_reply, fetched, *self._how)
        except TimeoutError:
            return False, _overtime(fetched.url, self._timeout)

    async def close(self) -> None:
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        workers, self._workers = self._workers, []
        await asyncio.gather(*(worker.close() for worker in workers))
