"""The dashboard's built front end (``static/``, made from ``frontend/`` by vite and committed,
so that neither running nor testing the head needs npm) and the offline OpenAPI UI."""

from __future__ import annotations

from pathlib import Path

#: the built dashboard: index.html, assets/, vendor/ (Swagger UI)
STATIC_DIR = Path(__file__).parent / "static"
#: where the head serves STATIC_DIR
STATIC_PATH = "/ui"
