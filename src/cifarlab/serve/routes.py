"""Every URL of ``cifarlab serve``: the pages (HTML) and the JSON API (docs/serve.md), each a short handler over
:class:`~cifarlab.serve.app.Lab`. Handlers that read files or run a model are plain functions, which Starlette
runs in its thread pool; only the uploads, which read the request body, are coroutines."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cifarlab.base.errors import UsageError
from cifarlab.serve.compare_view import compare_runs
from cifarlab.serve.lab import Lab, answer_json, number, png, run_context
from cifarlab.serve.upload import read_upload
from cifarlab.serve.views import PAGE, api_run_entry, group_rows, image_page, run_detail, run_page, samples


def lab_of(request: Request) -> Lab:
    """The app's state (set by make_app)."""
    lab: Lab = request.app.state.lab
    return lab


def index(request: Request) -> Response:
    lab = lab_of(request)
    rows = lab.rows()
    return lab.page("runs.html", rows=rows, groups=group_rows(rows))


def run(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.run(request.path_params["id"])
    return lab.page("run.html", **run_context(lab, data), **run_page(data))


def cell(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    q = request.query_params
    sort, offset = q.get("sort", "confidence"), number(request, "offset", 0)
    found = samples(data, q.get("true"), q.get("pred"), sort, offset, PAGE)
    context: dict[str, Any] = {"true": q.get("true"), "pred": q.get("pred"), "sort": sort, "offset": offset}
    return lab.page("cell.html", **run_context(lab, data), **found, **context)


def image(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    found = image_page(data, request.path_params["index"])
    return lab.page("image.html", **run_context(lab, data), image=found)


def image_png(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    return png(lab.images.png(data, request.path_params["index"]))


def gradcam_png(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    images, reason = lab.images.of(data)
    if images is None:
        return png(None)
    p = request.path_params
    return png(lab.explainer.test_gradcam(data, images, p["index"], p["cls"]))


def try_form(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    return lab.page("try.html", **run_context(lab, data), answer=None)


async def try_post(request: Request) -> Response:
    lab = lab_of(request)
    data = await run_in_threadpool(lab.finished, request.path_params["id"])
    name, content = await read_upload(request)
    answer = await run_in_threadpool(lab.explainer.upload, data, name, content)
    status = 200 if answer.received_png is not None else 400
    return lab.page("try.html", status=status, **run_context(lab, data), answer=answer)


def compare(request: Request) -> Response:
    lab = lab_of(request)
    q = request.query_params
    if not q.get("a") or not q.get("b"):
        return lab.page("compare.html", rows=lab.rows(), result=None, a=q.get("a"), b=q.get("b"))
    a, b = lab.finished(q["a"]), lab.finished(q["b"])
    result = compare_runs(a, b, q.get("show", "a_only"), number(request, "offset", 0), PAGE)
    return lab.page("compare.html", rows=lab.rows(), result=result, a=a.id, b=b.id)


def api_runs(request: Request) -> Response:
    lab = lab_of(request)
    return answer_json([api_run_entry(row) for row in lab.rows()])


def api_run(request: Request) -> Response:
    lab = lab_of(request)
    return answer_json(run_detail(lab.run(request.path_params["id"])))


def api_samples(request: Request) -> Response:
    lab = lab_of(request)
    data = lab.finished(request.path_params["id"])
    q = request.query_params
    limit = number(request, "limit", PAGE)
    found = samples(
        data, q.get("true"), q.get("pred"), q.get("sort", "confidence"), number(request, "offset", 0), limit
    )
    return answer_json(found)


async def api_predict(request: Request) -> Response:
    lab = lab_of(request)
    data = await run_in_threadpool(lab.finished, request.path_params["id"])
    name, content = await read_upload(request)
    top_k = number(request, "top_k", 3)
    if top_k < 1:
        raise UsageError("top_k must be at least 1")
    answer = await run_in_threadpool(lab.explainer.upload, data, name, content, top_k)
    return answer_json(answer.result, 200 if "error" not in answer.result else 400)


ROUTES = [
    Route("/", index),
    Route("/compare", compare),
    Route("/api/runs", api_runs),
    Route("/api/runs/{id:path}/samples", api_samples),
    Route("/api/runs/{id:path}/predict", api_predict, methods=["POST"]),
    Route("/api/runs/{id:path}", api_run),
    Route("/runs/{id:path}/cell", cell),
    Route("/runs/{id:path}/image/{index:int}.png", image_png),
    Route("/runs/{id:path}/gradcam/{index:int}/{cls:int}.png", gradcam_png),
    Route("/runs/{id:path}/image/{index:int}", image),
    Route("/runs/{id:path}/try", try_form, methods=["GET"]),
    Route("/runs/{id:path}/try", try_post, methods=["POST"]),
    Route("/runs/{id:path}", run),
]
