"""Request size limits for every endpoint, enforced before the application reads a body.

A declared Content-Length over the limit is refused at once (413, nothing read); a chunked
body is counted as it arrives and refused the moment it passes the limit. Limits are a table:
the first prefix that matches a path wins; unauthenticated endpoints get the tightest ones.
"""

from __future__ import annotations

from edgefleet.contracts.rest import ErrorBody

KiB, MiB, GiB = 1024, 1024**2, 1024**3
MAX_UPLOAD_BYTES = 2 * GiB  # a signed package (the agent's MAX_PACKAGE_BYTES)
# (method, path prefix, max body bytes), first match wins.
LIMITS: tuple[tuple[str, str, int], ...] = (
    ("POST", "/api/v1/enroll", 16 * KiB),  # unauthenticated: a token, an id and one CSR (~1 KiB)
    ("POST", "/api/v1/packages", MAX_UPLOAD_BYTES),  # operator token; signature checked before unpacking
    ("*", "/", 1 * MiB),  # every other JSON body (rollout plans, device patches, tokens)
)


def limit_for(method: str, path: str) -> int:
    return next(n for m, prefix, n in LIMITS if m in ("*", method) and path.startswith(prefix))


class BodyLimit:
    """ASGI middleware: 413 with the API's JSON error shape for a body over its path's limit."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _refuse(send, limit)
        seen, started, refused = 0, False, False

        async def counted():
            # Past the limit: answer 413 ourselves and tell the app the client left, so that it
            # stops reading (FastAPI would turn an exception raised here into a 400).
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit and not refused:
                refused = True
                if not started:
                    await _refuse(send, limit)
            return {"type": "http.disconnect"} if refused else message

        async def tracked(message):
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise  # the app's own error; with a refused body, whatever the app made of the disconnect


async def _refuse(send, limit: int) -> None:
    error = ErrorBody(
        error=f"the request body is over this endpoint's {limit}-byte limit",
        fix="send a smaller body",
        code="payload_too_large",
    )
    body = error.model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
