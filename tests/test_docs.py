"""The design document the code cites exists and every citation of it resolves.

Comments, docstrings, configs, scripts and Markdown cite docs/design.md as ``DESIGN §N``,
``DESIGN §N.M``, ``DESIGN §N step M`` (= §N.M), ``DESIGN §N table`` or with quoted sub-headings
(``DESIGN §N "Heading"``, several separated by commas, and further ``§K`` references in the same
chain). A citation resolves when section N is a ``## N. ...`` heading, N.M a ``### N.M ...`` heading
inside it, "table" a Markdown table inside it, and each quoted name a heading inside it (its text
without a leading N.M number) or a column of one of its tables (the variants table's "params enc/dec").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".md")
# The document itself and this file talk about the citation syntax; they are not citations.
NOT_CITING = {DESIGN, Path(__file__).resolve()}
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", "runs", "demo_out"}


# --------------------------------------------------------------------------------------------------
# The document's structure


@dataclass
class Section:
    number: int
    title: str
    subsections: set[int] = field(default_factory=set)  # M of every "### N.M" heading
    names: set[str] = field(default_factory=set)  # sub-heading texts (without an N.M prefix)
    columns: set[str] = field(default_factory=set)  # header cells of its tables
    has_table: bool = False


def parse_design(text: str) -> dict[int, Section]:
    sections: dict[int, Section] = {}
    current: Section | None = None
    in_fence = False
    previous = ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = re.match(r"^(#{2,6})\s+(.+?)\s*$", line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2)
            top = re.match(r"^(\d+)\.\s+(.+)$", title)
            if level == 2:
                current = Section(int(top.group(1)), top.group(2)) if top else None
                if current is not None:
                    assert current.number not in sections, f"docs/design.md: section {current.number} twice"
                    sections[current.number] = current
            elif current is not None:
                numbered = re.match(r"^(\d+)\.(\d+)\s+(.+)$", title)
                if numbered:
                    assert int(numbered.group(1)) == current.number, (
                        f"docs/design.md: heading {title!r} sits in section {current.number}"
                    )
                    current.subsections.add(int(numbered.group(2)))
                    title = numbered.group(3)
                current.names.add(title)
        elif current is not None and re.match(r"^\s*\|[\s:|-]+\|\s*$", line) and previous.lstrip().startswith("|"):
            # a delimiter row: the line before it is the table's header
            current.has_table = True
            current.columns.update(cell.strip() for cell in previous.strip().strip("|").split("|"))
        previous = line
    return sections


# --------------------------------------------------------------------------------------------------
# Citations


@dataclass(frozen=True)
class Citation:
    where: str  # path:line
    section: int
    sub: int | None = None  # §N.M or step M
    name: str | None = None  # a quoted sub-heading
    table: bool = False

    def __str__(self) -> str:
        ref = f"§{self.section}" + (f".{self.sub}" if self.sub is not None else "")
        ref += " table" if self.table else ""
        ref += f' "{self.name}"' if self.name is not None else ""
        return f"{self.where}: DESIGN {ref}"


_REF = re.compile(r"§(\d+)(?:\.(\d+))?")
_STEPS = re.compile(r"\s+steps?\s+(\d+)(?:\s*[–-]\s*(\d+))?")
_TABLE = re.compile(r"\s+table\b")
_QUOTED = re.compile(r"\s*[,(]?\s*[\"“]([^\"”\n]{1,60})[\"”]")
_NEXT_REF = re.compile(r"\s*,\s*(?:DESIGN\s+)?§(\d+)(?:\.(\d+))?")
# A line break plus the comment marker of the next line, replaced by as many spaces (offsets, and so
# line numbers, stay valid) so a citation continued on the next comment line is read as one.
_CONTINUATION = re.compile(r"\n[ \t]*(?:#+[ \t]*)?")


def find_citations(text: str, path: str) -> list[Citation]:
    flat = _CONTINUATION.sub(lambda m: " " * len(m.group()), text)
    found: list[Citation] = []
    for start in re.finditer(r"DESIGN\s+(?=§\d)", flat):
        pos = start.end()
        ref = _REF.match(flat, pos)
        where = f"{path}:{text.count(chr(10), 0, start.start()) + 1}"
        section, sub = int(ref.group(1)), ref.group(2)
        found.append(Citation(where, section, int(sub) if sub else None))
        pos = ref.end()
        while True:
            if m := _STEPS.match(flat, pos):
                first, last = int(m.group(1)), int(m.group(2) or m.group(1))
                found += [Citation(where, section, step) for step in range(first, last + 1)]
            elif m := _TABLE.match(flat, pos):
                found.append(Citation(where, section, table=True))
            elif m := _QUOTED.match(flat, pos):
                found.append(Citation(where, section, name=m.group(1)))
            elif m := _NEXT_REF.match(flat, pos):
                section, sub = int(m.group(1)), m.group(2)
                found.append(Citation(where, section, int(sub) if sub else None))
            else:
                break
            pos = m.end()
    return found


def _candidate_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files under git; otherwise a walk that skips build outputs."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")
        paths = [ROOT / name for name in listed if name]
    else:
        paths = [p for p in ROOT.rglob("*") if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.suffix in SUFFIXES and p.is_file() and p.resolve() not in NOT_CITING)


def repository_citations() -> list[Citation]:
    citations = []
    for path in _candidate_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if "DESIGN" in text:
            citations += find_citations(text, str(path.relative_to(ROOT)))
    return citations


def problem(citation: Citation, sections: dict[int, Section]) -> str | None:
    section = sections.get(citation.section)
    if section is None:
        return f"no section {citation.section} (sections: {sorted(sections)})"
    if citation.sub is not None and citation.sub not in section.subsections:
        return f"no sub-section {citation.section}.{citation.sub} (has {sorted(section.subsections)})"
    if citation.table and not section.has_table:
        return f"section {citation.section} has no table"
    if citation.name is not None and citation.name not in section.names | section.columns:
        return f"no sub-heading or table column {citation.name!r} in section {citation.section}"
    return None


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def sections() -> dict[int, Section]:
    assert DESIGN.is_file(), "docs/design.md is missing: the code cites it as DESIGN §N"
    return parse_design(DESIGN.read_text(encoding="utf-8"))


def test_design_has_sections_1_to_9_and_says_what_design_refers_to(sections):
    assert sorted(sections) == list(range(1, 10)), f"docs/design.md sections: {sorted(sections)}"
    head = "\n".join(DESIGN.read_text(encoding="utf-8").splitlines()[:12])
    assert "DESIGN §N" in head, "docs/design.md must say near its top that `DESIGN §N` in code refers to it"


def test_citation_parser_reads_every_form():
    text = (
        '"""Loss (DESIGN §4 "Losses",\n"Optimisation"; issue #4).\n'
        "# a (DESIGN §4 table (\"params enc/dec\")), DESIGN §4 steps 1–2, DESIGN §4.7\n"
        '# DESIGN §5 "Sampling", §6 "Generation"; DESIGN §7, §8): DESIGN §4, "Discriminator step"\n'
    )
    got = {str(c).split(": ", 1)[1] for c in find_citations(text, "x.py")}
    assert got == {
        "DESIGN §4", 'DESIGN §4 "Losses"', 'DESIGN §4 "Optimisation"', "DESIGN §4 table",
        'DESIGN §4 "params enc/dec"', "DESIGN §4.1", "DESIGN §4.2", "DESIGN §4.7", "DESIGN §5",
        'DESIGN §5 "Sampling"', "DESIGN §6", 'DESIGN §6 "Generation"', "DESIGN §7", "DESIGN §8",
        'DESIGN §4 "Discriminator step"',
    }
    first = find_citations(text, "x.py")[0]
    assert first.where == "x.py:1"


def test_every_design_citation_resolves(sections):
    citations = repository_citations()
    # The code cites the document in ~70 files; far fewer means the scan is broken, not the citations.
    assert len({c.where.split(":")[0] for c in citations}) >= 40, "citation scan found too few files"
    bad = [f"{c}: {why}" for c in citations if (why := problem(c, sections)) is not None]
    assert not bad, "citations that do not resolve in docs/design.md:\n" + "\n".join(bad)


def test_readme_links_the_design_document():
    text = README.read_text(encoding="utf-8")
    assert re.search(r"\]\((?:\./)?docs/design\.md(?:#[^)]*)?\)", text), "README.md must link docs/design.md"


def test_readme_has_no_html_comments_hiding_sections():
    """An unclosed or stray ``<!--`` once hid ten sections of the README from the rendered page."""
    text = README.read_text(encoding="utf-8")
    assert "<!--" not in text and "-->" not in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings)), "a README section heading appears twice"
