"""domain/ stays pure (docs/design.md §2): its modules import the standard library, msgspec
(its request Structs) and Cascade's own domain and error modules, nothing of the framework, the
database, the channels, the webhooks or the engine."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import cascade.domain

DOMAIN = Path(cascade.domain.__file__).parent
#: what a domain module may import besides the standard library
ALLOWED = ("msgspec", "cascade.domain", "cascade.errors")


def _imports(path: Path) -> set[str]:
    """The modules a source file imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path.name}: relative import of {node.module}"
            names.add(node.module)
    return names


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    return any(module == allowed or module.startswith(f"{allowed}.") for allowed in ALLOWED)


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda path: path.name)
def test_a_domain_module_imports_nothing_outside_the_domain(path: Path) -> None:
    """Every import of a domain module is the standard library, msgspec or Cascade's domain
    and error modules."""
    assert sorted(module for module in _imports(path) if not _allowed(module)) == []
