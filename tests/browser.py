"""A real headless Chromium driven through the DevTools protocol (for the report's tests).

`Browser.open(path)` loads a page and records every console error and uncaught exception;
`evaluate` runs JavaScript in it; `screenshot` returns PNG bytes. Chromium is Debian's
`chromium` package (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


class Browser:
    """One headless Chromium process and one page; an async context manager."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed: apt-get install chromium")
        self.size = (width, height)
        self.errors: list[str] = []
        """Console errors, uncaught exceptions and failed loads, as the page reported them."""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._events: dict[str, asyncio.Event] = {}

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self._proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port = await self._devtools_port(Path(self._profile.name) / "DevToolsActivePort")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            [page] = [t for t in json.load(r) if t["type"] == "page"]
        self._ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        width, height = self.size
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self._ws.close()
        os.killpg(self._proc.pid, signal.SIGKILL)  # chromium and its renderer processes
        self._proc.wait()
        self._profile.cleanup()

    async def _devtools_port(self, path: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}")
            await asyncio.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (a protocol error raises)."""
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        return await asyncio.wait_for(future, 60)

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._waiting.pop(message["id"])
                if "error" in message:
                    future.set_exception(RuntimeError(f"DevTools: {message['error']}"))
                else:
                    future.set_result(message.get("result", {}))
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.errors.append(" ".join(str(a.get("value", a)) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                thrown = details.get("exception", {}).get("description", "")
                self.errors.append(f"{details.get('text', 'exception')} {thrown}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                self.errors.append(params["entry"].get("text", ""))
            if method in self._events:
                self._events[method].set()

    async def open(self, path: Path) -> float:
        """Navigate to a local file and wait for its load event; returns the page's own
        navigation-to-load time in seconds."""
        loaded = self._events["Page.loadEventFired"] = asyncio.Event()
        result = await self.send("Page.navigate", url=path.resolve().as_uri())
        if result.get("errorText"):
            raise RuntimeError(f"navigation failed: {result['errorText']}")
        await asyncio.wait_for(loaded.wait(), 60)
        ms = await self.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return n.loadEventEnd || performance.now(); })()"
        )
        return float(ms) / 1000.0

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (an exception in it raises)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        """The viewport as PNG."""
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])
