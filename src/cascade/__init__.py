"""Cascade: a self-hosted, wire-compatible Nexmo Messages and Dispatch (failover) service."""

from __future__ import annotations

__version__ = "0.1.0"
