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

from dr_jax.tools.errors import ToolError
from dr_jax.tools.extract import Document, extract_document
from dr_jax.tools.fetch import Fetched

READY = b"ready\n"
"""A worker's first line: its imports (about 0.5 s of CPU) are done and it takes pages."""
STARTUP_S = 60.0
"""A worker not ready after this long (a hung import) is killed; pages go to a thread."""


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
    """Worker loop: "ready" once the imports are done, then 8-byte length + pickle of
    (Fetched, text_format, seconds) in on stdin, the same framing of `_extract_reply` out on
    stdout, in request order. A page that takes longer than `seconds` is abandoned by an alarm.
    Pickle is safe here: both ends are ours."""
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the replies
    signal.signal(signal.SIGALRM, _overtime)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; we exit on EOF
    replies.write(READY)
    replies.flush()
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

    Each page goes to the worker with the fewest pages queued; a worker that dies is
    replaced, and while none is alive pages are extracted in a thread.
    """

    def __init__(self, workers: int, timeout: float = 30.0) -> None:
        self._size = workers
        self._timeout = timeout
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
            "from dr_jax.tools.workers import serve_stdio; serve_stdio()",
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
