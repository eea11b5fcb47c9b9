"""Cube's web dashboard: server-rendered pages under ``/ui`` on the manager's port.

Jinja2 templates, one small vendored script (``static/cube.js``, no build step) that
refreshes each page's live part from its partial view, and a session from the cluster
token. See :mod:`cube.ui.guard` for what protects every request.
"""

from cube.ui.app import PREFIX, create_dashboard

__all__ = ["PREFIX", "create_dashboard"]
