"""One JSON error shape for every failure, and the handlers that map exceptions onto it.

Size limits answer 413, a body that is not JSON 415, invalid content 422, malformed JSON 400, a missing or
wrong API key 401, an unknown model or document 404, a full queue 503. A 500 means a bug in the server, never a
client mistake.
"""

from __future__ import annotations

import json
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3embed.server.batching import BatcherClosedError, QueueFullError
from m3embed.server.schemas import FIELD_CODES

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "request_too_large", 415: "invalid_request_error",
          422: "invalid_request_error",
          503: "server_overloaded"}


class ApiError(Exception):
    """An error the client can fix (or wait out); rendered as `{"error": {...}}` with its status."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


# FastAPI's text when reading the body raised something else than a JSON decode error (a RecursionError for a
# deeply nested body); it has no code, so it is answered as invalid_json naming the cause
FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers that give every error the JSON shape above."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            return error_response(415, f"the body must be JSON sent with 'Content-Type: application/json' (got "
                                       f"{kind or 'no content type'})", code="unsupported_media_type")
        errors = e.errors()
        bad_json = next((err for err in errors if err.get("type") == "json_invalid"), None)
        if bad_json is not None:
            where = bad_json.get("ctx", {}).get("error", "")
            return error_response(400, f"request body is not valid JSON ({where}); send a JSON object",
                                  code="invalid_json")
        code = errors[0]["type"] if errors and errors[0]["type"] in FIELD_CODES else "invalid_request"
        return error_response(422, "; ".join(_describe(err) for err in errors[:5]), code=code,
                              param=_loc(errors[0]) if errors else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 400 and e.detail == FASTAPI_PARSE_ERROR:  # json.loads raised other than a decode error
            why = "nested too deeply" if isinstance(e.__cause__, RecursionError) else \
                f"{type(e.__cause__).__name__}: {e.__cause__}"[:200]
            return error_response(400, f"request body could not be parsed as JSON ({why}); send a JSON object "
                                       "of ordinary depth", code="invalid_json")
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(QueueFullError)
    async def _busy(_: Request, e: QueueFullError) -> JSONResponse:
        return error_response(503, str(e), code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(BatcherClosedError)
    async def _closing(_: Request, e: BatcherClosedError) -> JSONResponse:
        return error_response(503, str(e), code="shutting_down", headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal server error ({type(e).__name__}); see the server log",
                              code="internal_error")


def _loc(err: dict) -> str:
    parts = [str(p) for p in err.get("loc", ()) if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _describe(err: dict) -> str:
    return f"{_loc(err)}: {err.get('msg', 'invalid')}"


class ApiKeyMiddleware:
    """With an API key, answers 401 to a request on /v1/* or /metrics without it, before anything reads the body
    (the route dependency it replaces ran after FastAPI had read and parsed up to --max-body-mb of JSON, so a deep
    or malformed body got 400/413 before 401). /health, /docs and /openapi.json stay open."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not _guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            response = error_response(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _guarded(path: str) -> bool:
    return path == "/metrics" or path == "/v1" or path.startswith("/v1/")


class BodyLimitMiddleware:
    """Answers 413 to a request body over `max_bytes` (declared or streamed) before the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(error_body(
            413, f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (--max-body-mb); "
                 "split the request", code="max_body_bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
