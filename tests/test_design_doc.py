"""The design document is the one the project cites: every ``docs/design.md §N`` or ``§N.M``
citation names a section or rule that exists, and nothing cites a design file or a path outside
the repository."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs/design.md"
#: what is scanned for citations: the code, tests, benchmarks and the project's documents
SCANNED = ("src", "tests", "bench", "docs", "README.md", "BENCHMARKS.md", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".sql", ".toml", ".txt", ".yml", ".yaml", ".json", ".cfg", ".sh"}

_HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)
_RULE = re.compile(r"^(\d+)\. \S")
_CITATION = re.compile(r"docs/design\.md §(\d+(?:\.\d+)?)")
#: inside the design document itself, a bare ``§N`` points at its own sections
_BARE_CITATION = re.compile(r"§(\d+(?:\.\d+)?)")
#: a design document other than docs/design.md: another case, another folder
_OTHER_DESIGN = re.compile(r"(?<![\w/])(?!docs/design\.md)[\w./-]*design\.md", re.IGNORECASE)
_PARENT_PATH = re.compile(r"(?:\.\./)+[\w./-]*")


def sections(design_text: str) -> set[str]:
    """The citable labels of a design text: ``N`` for each ``## N. Title`` heading and ``N.M``
    for each numbered rule (``M. text`` at the start of a line) in section N."""
    labels: set[str] = set()
    current: str | None = None
    for line in design_text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1)
            labels.add(current)
            continue
        rule = _RULE.match(line)
        if rule and current is not None:
            labels.add(f"{current}.{rule.group(1)}")
    return labels


def problems_in(text: str, where: Path, labels: set[str], *, own: bool = False) -> list[str]:
    """What is wrong with the citations in one file's text: a cited section or rule that the
    design lacks, a design document other than docs/design.md, or a parent-relative path that
    does not name a file of the repository (relative to the citing file). ``own`` is for the design
    document itself, whose bare ``§N`` citations are checked too."""
    found: list[str] = []
    cited = _BARE_CITATION if own else _CITATION
    for match in cited.finditer(text):
        if match.group(1) not in labels:
            found.append(f"{where}: cites docs/design.md §{match.group(1)}, which does not exist")
    for match in _OTHER_DESIGN.finditer(text):
        found.append(f"{where}: cites {match.group(0)}; the design is docs/design.md")
    for match in _PARENT_PATH.finditer(text):
        target = (where.parent / match.group(0)).resolve()
        if not target.is_relative_to(ROOT) or not target.exists():
            found.append(f"{where}: names {match.group(0)}, which is not a file of the repository")
    return found


def scanned_files() -> Iterable[Path]:
    """Every text file the check covers."""
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                yield file


def test_every_citation_names_an_existing_section_and_no_outside_file() -> None:
    """Every docs/design.md §N[.M] in the project exists, and nothing cites a file outside it."""
    labels = sections(DESIGN.read_text(encoding="utf-8"))
    found: list[str] = []
    for file in scanned_files():
        text = file.read_text(encoding="utf-8", errors="replace")
        found += problems_in(text, file, labels, own=file == DESIGN)
    assert found == []


def test_the_failover_rules_are_citable() -> None:
    """The design numbers the failover rules so that §1.1 to §1.10 can be cited."""
    labels = sections(DESIGN.read_text(encoding="utf-8"))
    assert {f"1.{n}" for n in range(1, 11)} <= labels


def test_sections_reads_headings_and_numbered_rules() -> None:
    """Headings give §N and numbered lines under them §N.M; indented or unheaded lists do not."""
    text = "1. before any heading\n## 1. Rules\n1. one\n2. two\n   3. indented\n## 2. Other\n"
    assert sections(text) == {"1", "1.1", "1.2", "2"}


def test_a_citation_of_a_missing_section_or_rule_is_reported() -> None:
    """A made-up §9.99 or §42 is reported; an existing §1.2 is not."""
    labels = {"1", "1.2"}
    cite = "docs/design.md §"
    text = f"see {cite}1.2, {cite}9.99 and {cite}42"
    found = problems_in(text, ROOT / "src" / "x.py", labels)
    assert len(found) == 2
    assert "§9.99" in found[0]
    assert "§42" in found[1]


def test_a_bare_section_sign_is_checked_only_in_the_design_itself() -> None:
    """In the design document a bare §N must exist; elsewhere a bare § is not a citation."""
    assert problems_in("as §7 says", DESIGN, {"1"}, own=True) != []
    assert problems_in("as §7 says", ROOT / "src" / "x.py", {"1"}) == []


def test_another_design_file_or_an_outside_path_is_reported() -> None:
    """A design file other than docs/design.md (any case, any folder) is reported, and so is
    a parent path that leaves the repository or names no file; one naming a file is not."""
    where = ROOT / "src" / "cascade" / "x.py"
    other, up = "DESIGN" + ".md", ".." + "/"
    assert problems_in(f"the rules ({other} §2)", where, set()) != []
    assert problems_in(f"see /work/shared/{other}", where, set()) != []
    assert problems_in(f"see {up * 4}shared/notes.md", where, set()) != []
    assert problems_in(f"bench/{up * 2}other-tree/src", ROOT / "README.md", set()) != []
    assert problems_in(f"see {up * 2}no-such-file.md", where, set()) != []
    assert problems_in(f"see {up * 2}BENCHMARKS.md", where, set()) == []
    assert problems_in("see docs/design.md §1", where, {"1"}) == []
