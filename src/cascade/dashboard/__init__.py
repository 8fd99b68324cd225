"""The web dashboard at ``/dashboard``: server-rendered pages served by the API's own process
(templates and static files in this package; nothing is loaded from elsewhere)."""

from __future__ import annotations

from cascade.dashboard.routes import Dashboard

__all__ = ["Dashboard"]
