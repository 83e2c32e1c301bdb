"""Log output of the long-running services (`agent run`, `fleet serve`): plain text, or one JSON
object per line for log collectors (journald with a JSON parser, Loki, Elasticsearch).

A JSON line holds `time` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`, every
field passed with `extra={...}`, and `exc_info` when an exception is logged. Stdlib logging only,
so the camera's install gains no package for it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Literal, get_args

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body |= {k: v for k, v in record.__dict__.items() if k not in _RECORD_KEYS and k not in body}
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that is not JSON (a Path, an exception) is logged as its text.
        return json.dumps(body, default=str, ensure_ascii=False)


def setup_logging(level: str | int, log_format: LogFormat) -> None:
    """Send the root logger's records to stderr as `log_format`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    # force: a second call (the launcher, then the run it becomes in tests) replaces the handler.
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True)
