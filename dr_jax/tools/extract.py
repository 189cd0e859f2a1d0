"""Bytes to readable text: HTML via trafilatura, PDF via pypdf, plain text as is; and text
to windows. Pure functions: `workers.Extractor` runs them off the event loop."""

import io
from dataclasses import dataclass

import lxml.html
import pypdf
import trafilatura
from trafilatura.settings import Extractor

from dr_jax.tools.errors import ToolError
from dr_jax.tools.fetch import Fetched

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("application/json", "application/xml", "text/xml")
# trafilatura.extract's options (main text and tables, no comments) by (format, fast), built
# once: extract() otherwise rebuilds them from its config file's parser on every page (~15% of
# a small page).
_OPTIONS = {
    (fmt, fast): Extractor(output_format=fmt, comments=False, tables=True, fast=fast)
    for fmt in ("markdown", "txt")
    for fast in (False, True)
}


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


def _from_html(body: bytes, url: str, text_format: str, fast: bool) -> tuple[str, str]:
    tree = trafilatura.load_html(body)
    if tree is None:
        raise ToolError("unreadable", f"{url} is not parseable HTML")
    title = _html_title(tree)
    options = _OPTIONS["markdown" if text_format == "markdown" else "txt", fast]
    text = trafilatura.extract(tree, options=options)
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


def extract_document(
    fetched: Fetched, text_format: str = "markdown", *, fast: bool = False
) -> Document:
    """Readable text of a fetched body, chosen by media type (sniffed when it is missing);
    `fast`: HTML by trafilatura's main extractor alone (ToolsConfig.fast_extraction).

    Binary formats other than PDF are refused with a ToolError the model can read.
    """
    media, body, url = fetched.media_type, fetched.body, fetched.url
    head = body[:1024].lstrip().lower()
    if media == "application/pdf" or body.startswith(b"%PDF-"):
        title, text = _from_pdf(body, url)
    elif b"\x00" in body[:8192]:
        raise ToolError("unsupported", f"{url} is binary content ({media or 'unknown type'})")
    elif media in _HTML_TYPES or (not media and head.startswith((b"<!doctype html", b"<html"))):
        title, text = _from_html(body, url, text_format, fast)
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
