"""The dashboard: `web/` files, Plotly.js from the installed `plotly` package, browser login."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from server.auth import COOKIE, token_matches
from server.deps import StateDep

__all__ = ["PLOTLY_JS", "WEB_DIR", "WRONG_TOKEN_NOTE", "router", "wrong_token_page"]

router = APIRouter()


def _find_web_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "web", here.parent / "web"):  # built wheel, then source tree
        if (candidate / "index.html").is_file():
            return candidate
    raise RuntimeError(f"fitdeck's web assets are missing: no index.html beside {here}.")


WEB_DIR = _find_web_dir()
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

WRONG_TOKEN_NOTE = (
    '<p id="wrong-token" class="banner" role="alert">The token in the link you opened is not '
    "this server's token. Open the URL that <code>fitdeck serve</code> printed when it "
    "started; the token is also kept in <code>&lt;db&gt;.token</code> beside its "
    "database.</p>"
)
"""What the sign-in page adds when the link carried a wrong token (static text)."""


@router.get("/", include_in_schema=False)
def index(request: Request, state: StateDep) -> Response:
    given = request.query_params.get("token")
    if given is not None:
        if state.token is not None and not token_matches(given, state.token):
            return wrong_token_page()
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


@router.post("/api/logout", status_code=204)
def logout() -> Response:
    """Forget the browser's sign-in: the cookie is cleared (no token needed to leave)."""
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def wrong_token_page() -> HTMLResponse:
    """The dashboard as a browser without the token sees it (it explains how to sign
    in), with 401 and a note that the link's token was wrong; no cookie is set."""
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for marker in ('<div id="banner"', "<main>", "</body>"):
        if marker in html:
            html = html.replace(marker, f"{WRONG_TOKEN_NOTE}\n  {marker}", 1)
            break
    return HTMLResponse(html, status_code=401, headers={"Cache-Control": "no-store"})


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
def plotly_js() -> FileResponse:
    return FileResponse(
        PLOTLY_JS,
        media_type="text/javascript",
        headers={"Cache-Control": f"public, max-age=86400, plotly={plotly.__version__}"},
    )
