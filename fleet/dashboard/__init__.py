"""The fleet dashboard: static HTML/JS/CSS served at /dashboard by the fleet's API app.

The page talks only to the REST API (/api/v1/...) with the token the operator types in, so
it can do exactly what that token's scope allows. Nothing is fetched from outside (no CDN):
the plots are drawn as inline SVG by static/app.js.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"


def mount_dashboard(app) -> None:
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/dashboard", include_in_schema=False)
    def _dashboard_root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard/", StaticFiles(directory=STATIC, html=True), name="dashboard")
