"""An uploaded photo, read with a cap: the request body is refused (413) past ``MAX_UPLOAD_BYTES`` before it is
parsed, so no upload can fill the server's memory or disk; the multipart form is parsed from the bytes read."""

from __future__ import annotations

from starlette.requests import Request

from cifarlab.base.errors import CifarlabError, UsageError

MAX_UPLOAD_BYTES = 16 * 2**20  # a request body past this is refused with 413; the pixels are capped by the decoder


class TooLarge(CifarlabError):
    """An upload over the byte cap (the app answers 413)."""


async def bounded_body(request: Request, cap: int | None = None) -> bytes:
    """The request body, refused as soon as it (or its announced length) passes ``cap`` bytes (default
    MAX_UPLOAD_BYTES)."""
    cap = MAX_UPLOAD_BYTES if cap is None else cap
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > cap:
        raise TooLarge(f"upload too large ({int(announced):,} bytes; the limit is {cap:,})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"upload too large (over the limit of {cap:,} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, cap: int | None = None) -> tuple[str, bytes]:
    """(file name, content) of the multipart field ``file``; a missing field is a one-line 400."""
    body = await bounded_body(request, cap)
    sent = False

    async def replay() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # noqa: BLE001 - any malformed multipart body is the client's error
        raise UsageError(f"the upload is not a readable multipart form ({type(exc).__name__})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise UsageError("send the image as the multipart field 'file'")
    content = await upload.read()
    await form.close()
    if not content:
        raise UsageError("the uploaded file is empty")
    return upload.filename or "upload", content
