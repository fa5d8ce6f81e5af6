"""The dashboard: `web/` files, Plotly.js from the installed `plotly` package, browser login."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from server.auth import COOKIE, token_matches
from server.deps import StateDep

__all__ = ["PLOTLY_JS", "WEB_DIR", "router"]

router = APIRouter()


def _find_web_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "web", here.parent / "web"):  # built wheel, then source tree
        if (candidate / "index.html").is_file():
            return candidate
    raise RuntimeError(f"fitdeck's web assets are missing: no index.html beside {here}.")


WEB_DIR = _find_web_dir()
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@router.get("/", include_in_schema=False)
def index(request: Request, state: StateDep) -> Response:
    given = request.query_params.get("token")
    if given is not None:
        if state.token is not None and not token_matches(given, state.token):
            return JSONResponse(
                {"error": {"status": 401, "message": "Wrong token in the URL."}}, status_code=401
            )
        # The token leaves the address bar (and history) at once.
        response: Response = RedirectResponse(
            "/", status_code=303, headers={"Cache-Control": "no-store"}
        )
        if state.token is not None:
            response.set_cookie(
                COOKIE, state.token, httponly=True, samesite="strict", path="/", max_age=30 * 86400
            )
        return response
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
def plotly_js() -> FileResponse:
    return FileResponse(
        PLOTLY_JS,
        media_type="text/javascript",
        headers={"Cache-Control": f"public, max-age=86400, plotly={plotly.__version__}"},
    )
