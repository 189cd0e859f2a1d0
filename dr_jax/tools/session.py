"""Per-trajectory tool state: the reader's memory and what the latest search returned."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Note:
    """One piece of information the reading agent extracted from one window of a page."""

    query: str
    url: str
    page: int
    text: str


@dataclass
class ToolSession:
    """State of one trajectory's tools; create one per trajectory and pass it to every call.

    `notes` is the reader's memory (it extracts only what is new against it), `latest_search`
    maps each URL of the latest web_search to the query that found it, and `next_window`
    remembers where reading of a URL stopped so a second browse continues there.
    """

    question: str
    notes: list[Note] = field(default_factory=list)
    latest_search: dict[str, str] = field(default_factory=dict)
    next_window: dict[str, int] = field(default_factory=dict)

    def record_search(self, hits_by_query: list[tuple[str, list[str]]]) -> None:
        """Remember the URLs of a search; the first query that found a URL is its sub-question."""
        self.latest_search = {}
        for query, urls in hits_by_query:
            for url in urls:
                self.latest_search.setdefault(url, query)

    def memory(self) -> str:
        """The notes so far, grouped by the query whose results they came from."""
        by_query: dict[str, list[str]] = {}
        for note in self.notes:
            by_query.setdefault(note.query, []).append(note.text)
        return "\n\n".join(
            f"<query>{query}</query>\n<notes>\n" + "\n\n".join(texts) + "\n</notes>"
            for query, texts in by_query.items()
        )
