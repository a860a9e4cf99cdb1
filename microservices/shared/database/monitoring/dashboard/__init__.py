"""``edulink-db dashboard``: one read-only web page for the database and one per
service (PgHero-like, but per service = per role of the shared database).

Server-rendered with Jinja2 (autoescaping on) on the stdlib WSGI server the metrics
exporter also uses, so it adds one small dependency and mounts into any WSGI app
(:func:`make_app`).  Charts are drawn by uPlot (MIT, vendored in ``static/`` from the
npm registry, served locally: no CDN at run time).
"""

from __future__ import annotations

from .app import TOKEN_ENV, DashboardApp, make_app, serve
from .data import DashboardData, Sampler

__all__ = ["TOKEN_ENV", "DashboardApp", "DashboardData", "Sampler", "make_app", "serve"]
