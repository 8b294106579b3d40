"""The web app of ``cifarlab serve``: a Starlette application over the served folders, read-only.

Pages are Jinja2 templates with autoescaping (lab.py); the JSON API behind them is documented in docs/serve.md. A bad
id or file is a 404, a bad parameter a 400, an oversized upload a 413, a run that cannot be read a 422 for that run
only, anything else a 500 with one line; never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.serve.lab import Lab, answer_json
from cifarlab.serve.roots import NotServed
from cifarlab.serve.routes import ROUTES
from cifarlab.serve.store import problem_text
from cifarlab.serve.upload import TooLarge

STATIC = Path(__file__).parent / "static"


def failure(request: Request, exc: Exception) -> Response:
    """Any error as one line: JSON for the API, a page for the rest. Never a traceback."""
    if isinstance(exc, NotServed):
        status = 404
    elif isinstance(exc, TooLarge):
        status = 413
    elif isinstance(exc, UsageError | ValueError):
        status = 400
    elif isinstance(exc, CifarlabError):
        status = 422
    else:
        status = 500
    message = problem_text(exc) if status != 500 else f"internal error ({type(exc).__name__}); see the server log"
    if request.url.path.startswith("/api/"):
        return answer_json({"error": message}, status)
    lab: Lab = request.app.state.lab
    return lab.page("error.html", status=status, message=message)


def make_app(folders: list[str | Path], data_dir: str | None = None) -> Starlette:
    """The app serving ``folders`` (run folders, sweep folders, or folders of them); ``data_dir`` is where the
    CIFAR files lie, to show test images (as ``--data-dir`` of analyze)."""
    lab = Lab(folders, data_dir)
    app = Starlette(
        routes=[*ROUTES, Mount("/static", StaticFiles(directory=STATIC), name="static")],
        exception_handlers={Exception: failure, NotServed: failure, CifarlabError: failure, TooLarge: failure},
    )
    app.state.lab = lab
    return app
