"""Every file the README and docs point at is in the repository: relative markdown links (and
their #anchors) and inline-code paths such as `docs/bench.md` or `examples/locustfile.py`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\s]+)`(?!`)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
MD_WORD = re.compile(r"(?<![\w/.(-])([\w./-]+\.md)\b(?![(#])")


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped (but - and _), spaces become -.
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def _is_path(token: str, doc: Path) -> bool:
    first = token.split("/")[0]
    return (
        token.startswith("../")
        or token.endswith(".md")
        or ("/" in token and first != "" and (first in TOP_LEVEL or (doc.parent / first).exists()))
    )


def _references(doc: Path, text: str | None = None) -> list[str]:
    text = FENCE.sub("", doc.read_text() if text is None else text)
    links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    code = [t for t in INLINE_CODE.findall(text) if _is_path(t, doc)]
    prose = INLINE_CODE.sub("", LINK.sub("", text))
    words = [t for t in MD_WORD.findall(prose) if not re.match(r"[a-z]+:", t)]
    return links + code + words


def _resolve(target: str, doc: Path) -> Path | None:
    for base in (doc.parent, ROOT):
        p = (base / target).resolve()
        if p.exists() and p.is_relative_to(ROOT):
            return p
    return None


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_referenced_file_exists(doc: Path) -> None:
    missing = []
    for ref in _references(doc):
        path, _, anchor = ref.partition("#")
        target = _resolve(path, doc) if path else doc
        if target is None:
            missing.append(ref)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            missing.append(f"{ref} (no such heading)")
    assert missing == [], f"{doc.relative_to(ROOT)} points at what the repository lacks"


def test_the_checker_sees_references() -> None:
    readme = _references(ROOT / "README.md")
    assert "docs/bench.md" in readme and "constraints.txt" in readme
    assert "WORKLOADS.md" in _references_of("Figures: W1-W3 of WORKLOADS.md, see `docs/x.md`.")
    assert _resolve("../shared/reference/", ROOT / "docs" / "bench.md") is None


def _references_of(text: str) -> list[str]:
    return _references(ROOT / "README.md", text)
