"""The run's report (Markdown) as HTML that is safe to show on the review page.

``report.md`` holds text that came from outside the program (config titles, paths, stage outputs,
whatever a person wrote into the file), so it is rendered in two steps that each stop markup on its
own: Markdown with raw HTML turned off (``<script>`` in the file is shown as text), then an allow-list
pass over the HTML that keeps only the tags and attributes Markdown itself produces, drops everything
else (the content of ``script``/``style``/``iframe``... too) and keeps ``href``/``src`` only for
relative, ``http``, ``https`` and ``mailto`` URLs (after entity decoding, so ``&#106;avascript:`` is
caught). The page's Content-Security-Policy is a third line behind these.

>>> markdown_html('# Hi <script>alert(1)</script> [x](javascript:alert(1))')
'<h1>Hi &lt;script&gt;alert(1)&lt;/script&gt; <a>x</a></h1>'
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

#: tags Markdown (with the tables and fenced_code extensions) writes, and the attributes kept on each
ALLOWED: dict[str, frozenset[str]] = {
    **{t: frozenset() for t in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "em", "strong", "code", "pre",
                                "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "figure", "figcaption", "del", "sub", "sup")},
    "a": frozenset({"href", "title"}),
    "img": frozenset({"src", "alt", "title"}),
    "th": frozenset({"style"}),
    "td": frozenset({"style"}),
}
VOID = frozenset({"img", "br", "hr"})
#: elements dropped together with everything inside them
DROP = frozenset({"script", "style", "iframe", "object", "embed", "template", "noscript", "textarea", "select", "svg", "math", "title", "head"})
SCHEMES = frozenset({"", "http", "https", "mailto"})
_ALIGN = re.compile(r"^text-align: (left|right|center);?$")
_INVISIBLE = re.compile(r"[\x00-\x20\x7f]")


def safe_url(url: str) -> bool:
    """Whether a (decoded) link target is relative or http(s)/mailto; browsers ignore the control
    characters and spaces that could hide a ``javascript:`` scheme, so they are removed first."""
    try:
        return urlsplit(_INVISIBLE.sub("", url)).scheme.lower() in SCHEMES
    except ValueError:
        return False


class _AllowList(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skip = 0

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> str:
        kept = []
        for key, value in attrs:
            if value is None or key not in ALLOWED[tag]:
                continue
            if key in ("href", "src") and not safe_url(value):
                continue
            if key == "style" and not _ALIGN.match(value):
                continue
            kept.append(f' {key}="{html.escape(value, quote=True)}"')
        return "".join(kept)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROP:
            self.skip += 1
        elif not self.skip and tag in ALLOWED:
            self.out.append(f"<{tag}{self._attrs(tag, attrs)}>")
            if tag not in VOID:
                self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in DROP and not self.skip and tag in VOID:
            self.out.append(f"<{tag}{self._attrs(tag, attrs)}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in DROP:
            self.skip = max(0, self.skip - 1)
        elif not self.skip and tag in self.open:
            while self.open:
                last = self.open.pop()
                self.out.append(f"</{last}>")
                if last == tag:
                    break

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(html.escape(data, quote=False))


def clean_html(fragment: str) -> str:
    """``fragment`` with only the allowed tags, attributes and URLs; all text escaped."""
    parser = _AllowList()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.out) + "".join(f"</{t}>" for t in reversed(parser.open))


def markdown_html(text: str) -> str:
    """Markdown to safe HTML (raw HTML in the text is shown as text, then :func:`clean_html`)."""
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return clean_html(md.convert(text))
