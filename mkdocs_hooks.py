"""MkDocs hook of the docs site: a page pulls sections of the README in, so that they are written once.

A line ``<!-- readme: HEADING -->`` in a page under docs/ is replaced by the README's section whose
heading starts with HEADING (its heading line, its text and its subsections, up to the next heading
of the same or a higher level). Links are rewritten for the site: ``docs/X`` becomes ``X``, and
``#anchor`` becomes the page (and anchor) that includes that section. A heading that is not in
the README, or an anchor no page includes, stops the build with a message (``mkdocs build --strict``
in the tests).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

README = Path(__file__).resolve().parent / "README.md"
MARKER = re.compile(r"^<!-- readme: (?P<heading>.+?) -->$", re.MULTILINE)
HEADING = re.compile(r"^(?P<hashes>#{1,6}) (?P<title>.+)$")


class ReadmeSectionError(ValueError):
    """A page names a README section that does not exist, or a link cannot be placed."""


def readme_sections(text: str) -> list[tuple[int, str, int, int]]:
    """(level, title, start, end) line ranges of every heading of ``text`` (fenced code skipped)."""
    lines = text.splitlines()
    heads, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match:
            heads.append((len(match["hashes"]), match["title"].strip(), i))
    sections = []
    for k, (level, title, start) in enumerate(heads):
        end = next((s for lv, _, s in heads[k + 1:] if lv <= level), len(lines))
        sections.append((level, title, start, end))
    return sections


def find_section(text: str, heading: str) -> tuple[int, str, str]:
    """(level, title, markdown) of the first section whose title starts with ``heading``."""
    lines = text.splitlines()
    for level, title, start, end in readme_sections(text):
        if title.startswith(heading):
            return level, title, "\n".join(lines[start:end]).rstrip() + "\n"
    raise ReadmeSectionError(f"README.md has no section whose heading starts with {heading!r}")


def _anchor_pages(docs_dir: Path, text: str) -> dict[str, str]:
    """Slug of every README heading included by a page (with its subsections) -> that page's path."""
    pages: dict[str, str] = {}
    sections = readme_sections(text)
    for page in sorted(docs_dir.rglob("*.md")):
        for marker in MARKER.finditer(page.read_text()):
            _, title, _ = find_section(text, marker["heading"])
            start, end = next((s, e) for _, t, s, e in sections if t == title)
            for _, t, s, _ in sections:
                if start <= s < end:  # the section and its subsections
                    pages.setdefault(slugify(_plain(t), "-"), page.relative_to(docs_dir).as_posix())
    return pages


def _plain(title: str) -> str:
    return re.sub(r"[`*_]", "", title)


def on_config(config: Any, **_: Any) -> Any:
    """Read the README once per build and map its anchors to the pages that include them."""
    text = README.read_text()
    config["extra"]["_readme"] = text
    config["extra"]["_readme_anchors"] = _anchor_pages(Path(config["docs_dir"]), text)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    """Replace every ``<!-- readme: HEADING -->`` line of ``page`` by that README section, links rewritten."""
    if not MARKER.search(markdown):
        return markdown
    text, anchors = config["extra"]["_readme"], config["extra"]["_readme_anchors"]
    here = page.file.src_uri
    depth = here.count("/")

    def link(match: re.Match[str]) -> str:
        target = match["target"]
        if target.startswith("docs/"):
            return f"]({'../' * depth}{target[5:]})"
        if target.startswith("#"):
            owner = anchors.get(target[1:])
            if owner is None:
                raise ReadmeSectionError(f"{here}: the README link {target} goes to a section no page includes")
            return f"]({target})" if owner == here else f"]({'../' * depth}{owner}{target})"
        return match[0]

    def include(marker: re.Match[str]) -> str:
        _, _, section = find_section(text, marker["heading"])
        return re.sub(r"\]\((?P<target>[^)\s]+)\)", link, section)

    return MARKER.sub(include, markdown)
