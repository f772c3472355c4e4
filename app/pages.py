"""Server-rendered pages (Jinja2): the templates, their static files and the page helpers.

The pages work offline: no CDN, no client-side chart library. Charts are SVG made on the server
(:mod:`app.report`); the one script (``static/jobs.js``) and the stylesheet are served by the app
at ``/ui/static``. Every page is sent with a Content-Security-Policy that allows only the app's
own scripts, styles and requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.report import report_view
from models.schema import Recommendation

__all__ = [
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "login_location",
    "login_page",
    "message_page",
    "render",
    "report_links",
    "safe_next",
    "standalone_report",
    "static_files",
]

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

templates = Jinja2Templates(directory=TEMPLATES_DIR)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """A template rendered as a page, with the security headers."""
    response = templates.TemplateResponse(
        request, name, {"owner": None, **context}, status_code=status_code
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/ui/jobs"
    return value


def login_page(
    request: Request,
    *,
    next_path: str | None = None,
    error: str | None = None,
    status_code: int = 401,
) -> HTMLResponse:
    """The sign-in form; after it, the browser goes to ``next_path`` (default: the page that
    was asked for)."""
    if next_path is None:
        query = f"?{request.url.query}" if request.url.query else ""
        next_path = request.url.path + query
    response = render(
        request,
        "login.html",
        {"next": safe_next(next_path), "error": error},
        status_code=status_code,
    )
    if status_code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def message_page(
    request: Request, *, owner: str | None, title: str, message: str, status_code: int
) -> HTMLResponse:
    """A page that says why there is nothing to show (404, 409)."""
    return render(
        request,
        "message.html",
        {"owner": owner, "title": title, "message": message},
        status_code=status_code,
    )


def login_location(path: str) -> str:
    return f"/ui/login?next={quote(path, safe='/')}"


def report_links(job_id: str, base: str = "") -> dict[str, str]:
    """The report's links: the jobs page and the downloads (paths, or URLs under ``base``)."""
    return {
        "jobs": f"{base}/ui/jobs",
        "json": f"{base}/recommendations/{job_id}/download",
        "cka_svg": f"{base}/recommendations/{job_id}/heatmaps/cka.svg",
        "grad_svg": f"{base}/recommendations/{job_id}/heatmaps/grad.svg",
    }


def standalone_report(rec: Recommendation, job_id: str, *, server: str) -> str:
    """The report page as one self-contained HTML file (styles inline, charts inline SVG),
    for ``taskgrouper report``: it opens offline; its links point at ``server``."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"])
    )
    template = env.get_template("report.html")
    return template.render(
        standalone=True,
        inline_css=(STATIC_DIR / "ui.css").read_text(encoding="utf-8"),
        server=server,
        owner=None,
        job={"id": job_id},
        links=report_links(job_id, server.rstrip("/")),
        v=report_view(rec),
    )
