"""Every error as JSON `{"error": "one line"}`: validation, HTTP errors, oversized bodies, crashes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's HTTPException(400) detail


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe_validation(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line: `images: input should be less than or equal to 16; ...`."""
    parts = []
    for e in errors:
        where, *path = e["loc"]
        name = ".".join(map(str, path)) if path else where
        if e["type"] == "json_invalid":
            parts.append(f"the body is not valid JSON ({e['ctx']['error']})")
            continue
        if where == "body" and not path:
            parts.append('the body must be a JSON object like {"prompt": "a red circle"}')
            continue
        message = str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]
        parts.append(f"{name}: {message[:1].lower()}{message[1:]}")
    return "; ".join(parts)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for this class only
    return error_response(422, describe_validation(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)  # registered for this class only
    message = exc.detail
    if exc.status_code == 400 and message == BODY_NOT_PARSED:
        # FastAPI's answer to a body it cannot decode (not UTF-8): a malformed body like any other.
        return error_response(422, "the body is not valid JSON (it must be UTF-8 text)")
    if message == HTTPStatus(exc.status_code).phrase:  # Starlette's own, e.g. "Not Found"
        message = f"{message.lower()}: {request.method} {request.url.path}"
    return error_response(exc.status_code, message, exc.headers)


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("error serving %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _crash)


class BodySizeLimit:
    """Answer 413 to a request whose body is over `max_bytes`, whether it declares its length or not.

    The body is read here (it is small by then) and handed on to the app in one piece.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"the request body is over the {self.max_bytes}-byte limit")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_large(scope, receive, send)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
