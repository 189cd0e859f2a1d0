"""A real redis-server (Debian's `redis-server` package) on 127.0.0.1 for tests: nothing saved
to disk, a free port, and `kill` / `start` to take it away mid-run and bring it back there."""

import shutil
import socket
import subprocess
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    """Whether the server answers PING (with PONG, or asking for the password it was given)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """`with RedisServer() as server: server.url` — redis://127.0.0.1:<port>/0."""

    def __init__(self, *options: str) -> None:
        """`options`: more redis-server flags, e.g. "--requirepass", "secret"."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is missing: apt-get install -y redis-server")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="redis-")
        self._command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        # nothing saved: what a kill loses is lost, as on a server replaced after a crash
        self._command += ["--save", "", "--appendonly", "no", "--dir", self._dir.name, *options]
        self._process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self._process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL: the server vanishes as on a crash, with no shutdown of its own."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._dir.cleanup()
