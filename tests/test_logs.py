"""The JSON log format (edgefleet/logs.py): one object per line with the fixed keys and extras."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from edgefleet.logs import JsonFormatter, setup_logging


def record_line(logger: logging.Logger, emit) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines  # a traceback stays inside its one line
    return json.loads(lines[0])


def test_a_record_is_one_json_object_with_time_level_logger_message_and_extras():
    log = logging.getLogger("edgefleet.test.json")
    line = record_line(
        log, lambda: log.warning("frame %s skipped", "f-1", extra={"device": "cam-1", "path": Path("/x")})
    )
    assert line.pop("time").endswith("+00:00")
    assert line == {
        "level": "WARNING",
        "logger": "edgefleet.test.json",
        "message": "frame f-1 skipped",
        "device": "cam-1",
        "path": "/x",  # not JSON by itself: written as its text
    }


def test_an_exception_is_kept_in_the_same_line():
    log = logging.getLogger("edgefleet.test.json")

    def fail() -> None:
        try:
            raise RuntimeError("broker gone\nsecond line")
        except RuntimeError:
            log.exception("publish failed")

    line = record_line(log, fail)
    assert line["level"] == "ERROR" and line["message"] == "publish failed"
    assert "RuntimeError: broker gone\nsecond line" in line["exc_info"]


def test_setup_logging_switches_the_root_handler(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "json")
        logging.getLogger("edgefleet.test").info("hello")
        setup_logging("warning", "text")
        logging.getLogger("edgefleet.test").info("dropped: below warning")
        logging.getLogger("edgefleet.test").warning("plain")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert json.loads(lines[0])["message"] == "hello"
    assert len(lines) == 2 and lines[1].endswith("WARNING edgefleet.test: plain")
