"""The README and docs/ stay navigable: every relative markdown link resolves (the file, and the
heading its #anchor names, as GitHub spells anchors), no commit hash is cited, every docs page can
be reached from the README, and the README stays a five-minute read (at most 200 lines)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from itel_dagster.settings.paths import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A commit hash as people cite one: 7-40 hex digits holding both a digit and a letter.
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")


def _blank(match: re.Match) -> str:
    """Replace code by as many newlines, so line numbers stay right."""
    return "\n" * match.group(0).count("\n")


def _without_code(markdown: str) -> str:
    return CODE_SPAN.sub(_blank, FENCE.sub(_blank, markdown))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped (letters,
    digits, `_` and `-` kept), each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of every heading; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub(_blank, markdown)):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def relative_links(markdown: str) -> list[tuple[int, str]]:
    """(line, target) of every link that is not a URL with a scheme, outside code."""
    text = _without_code(markdown)
    links = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION):
        for match in pattern.finditer(text):
            target = match.group(1)
            if target and not SCHEME.match(target):
                links.append((text.count("\n", 0, match.start()) + 1, target))
    return sorted(links)


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else path.name


def broken_links(path: Path) -> list[str]:
    """One line per link of `path` whose file or #anchor does not exist."""
    problems = []
    for line, target in relative_links(path.read_text(encoding="utf-8")):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{_shown(path)}:{line}"
        if not linked.exists():
            problems.append(f"{where}: {target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and unquote(anchor) not in anchors(
                linked.read_text(encoding="utf-8")):
            problems.append(f"{where}: {target}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def documentation_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    files = documentation_files()
    checked = sum(len(relative_links(f.read_text(encoding="utf-8"))) for f in files)
    assert checked >= 20, f"only {checked} relative links found: is the link pattern still right?"
    problems = [problem for f in files for problem in broken_links(f)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def linked_pages(page: Path) -> set[Path]:
    """The markdown files `page` links to."""
    links = relative_links(page.read_text(encoding="utf-8"))
    files = (target.partition("#")[0] for _, target in links)
    return {(page.parent / unquote(f)).resolve() for f in files if f.endswith(".md")}


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page not in reached and page.exists():
            reached.add(page)
            todo.extend(linked_pages(page))
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in reached]
    assert not orphans, f"docs pages no link from README.md leads to (link them there): {orphans}"


def test_the_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference to docs/")


def test_no_commit_hash_is_cited_in_the_readme_or_docs():
    cited = [f"{f.name}:{n}: {m.group(0)}" for f in documentation_files()
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             for m in COMMIT_HASH.finditer(line)]
    assert not cited, "commit hashes (docs describe what is, not its history):\n" + "\n".join(cited)


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/guide.md").write_text(
        "# Guide\n\n## Kafka: retention, sizes, deadlines\n\n## The `itel-dagster` command\n\n"
        "## Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](docs/guide.md#kafka-retention-sizes-deadlines)\n"
        "[ok](docs/guide.md#the-itel-dagster-command) [ok](docs/guide.md#notes-1) [ok](#page)\n"
        "![ok](docs/guide.md) [web](https://example.com/x.md)\n"
        "`[in code](gone.md)`\n\n"
        "[missing file](docs/gone.md)\n"
        "[missing anchor](docs/guide.md#not-a-heading)\n"
        "[own anchor missing](#nowhere)\n\n"
        "[ref]: docs/also-gone.md\n")

    problems = broken_links(page)

    assert [p.split(": ")[1] for p in problems] == [
        "docs/gone.md", "docs/guide.md#not-a-heading", "#nowhere", "docs/also-gone.md"]
    assert {"guide", "kafka-retention-sizes-deadlines", "the-itel-dagster-command", "notes",
            "notes-1"} == anchors((tmp_path / "docs/guide.md").read_text())
    assert COMMIT_HASH.findall("at 41c6dad and 9ba617f, not 2026-12, 10000000 or deadbeef") == [
        "41c6dad", "9ba617f"]
