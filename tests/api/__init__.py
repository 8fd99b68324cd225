"""HTTP contract tests of the accept API."""

from __future__ import annotations
