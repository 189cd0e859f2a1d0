"""The two ways tools fail: a user's set-up mistake (raised) or the web misbehaving (observed)."""


class ToolsSetupError(RuntimeError):
    """A configuration problem found at start-up (missing key, unreachable backend, bad path)."""


class ToolError(Exception):
    """A failure the web caused; the executor turns it into an observation, never lets it escape.

    `kind` is a short stable label used for metrics and retry decisions ("timeout", "http_5xx",
    "too_large", "unsafe_url", ...); the message is what the model reads.
    """

    RETRYABLE = frozenset({"timeout", "network", "http_5xx", "http_429"})

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after

    def __reduce__(self):  # keeps kind and retry_after across process-pool boundaries
        return (_rebuild, (self.kind, str(self), self.retry_after))

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


def _rebuild(kind: str, message: str, retry_after: float | None) -> ToolError:
    return ToolError(kind, message, retry_after=retry_after)
