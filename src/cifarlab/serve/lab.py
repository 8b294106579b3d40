"""The app's state and the helpers every handler uses: :class:`Lab` (the served folders, the run store, the test
images, the models, the templates), JSON and PNG answers with the security headers, query numbers.

Every answer carries a Content-Security-Policy that lets a page load only from this server, so nothing is ever
fetched from elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.serve.explain import Explainer
from cifarlab.serve.pictures import TestImages, data_uri
from cifarlab.serve.roots import NotServed, Served
from cifarlab.serve.store import RunData, RunStore, summary_row
from cifarlab.serve.views import PAGE

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def percent(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def templates() -> Environment:
    env = Environment(loader=PackageLoader("cifarlab.serve", "templates"), autoescape=select_autoescape(default=True))
    env.filters.update(q=lambda text: quote(str(text), safe=""), pct=percent, datauri=data_uri)
    return env


class Lab:
    """The app's state: the served folders, the run store, the test images and the models."""

    def __init__(self, folders: list[str | Path], data_dir: str | None = None) -> None:
        self.served = Served.of(folders)
        self.store = RunStore()
        self.images = TestImages(data_dir)
        self.explainer = Explainer()
        self.env = templates()

    def run(self, run_id: str) -> RunData:
        return self.store.get(self.served.entry(run_id))

    def finished(self, run_id: str) -> RunData:
        """The run, refused when it is not a finished, readable run."""
        data = self.run(run_id)
        if data.status != "done":
            raise CifarlabError(f"run {escape(run_id)!r}: {data.error or 'still training'}")
        return data

    def rows(self) -> list[dict[str, Any]]:
        self.served.scan()
        with self.served.lock:
            entries = list(self.served.entries.values())
        return [summary_row(self.store.get(e)) for e in entries]

    def page(self, name: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(page=PAGE, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def answer_json(data: Any, status: int = 200) -> JSONResponse:
    """JSON with no NaN or infinity (they are not JSON); the values here are already finite or None."""
    body = json.dumps(data, allow_nan=False)
    return JSONResponse(json.loads(body), status_code=status, headers=SECURITY_HEADERS)


def png(data: bytes | None) -> Response:
    if data is None:
        raise NotServed("the test images of this run are not available")
    return Response(data, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})


def number(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        raise UsageError(f"{name} must be a whole number")
    return int(text)


def run_context(lab: Lab, data: RunData) -> dict[str, Any]:
    """What every page about one run shows at its top."""
    return {"run": summary_row(data), "images_note": lab.images.of(data)[1] if data.status == "done" else None}
