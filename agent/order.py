"""Where each message stands in what the camera said: (run, seq) on every device message.

`run` counts the agent's starts, kept in `<state>/run` beside the camera's identity (a camera
that loses it loses its identity too, and enrolls again); `seq` counts the messages of one run
in the order they are made. The offline last will is made at start but sent by the broker when
the run ends, so it carries LAST_SEQ. The fleet keeps a device's state from its latest message
by (run, seq) (edgefleet/contracts/mqtt.py DeviceMessage), whatever order messages arrive in.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

from edgefleet.agent.update import write_atomic
from edgefleet.contracts.mqtt import LAST_SEQ, MAX_RUN
from edgefleet.errors import BadInputError


class MessageOrder:
    def __init__(self, state_dir: Path) -> None:
        path = state_dir / "run"
        self.run = _read_run(path) + 1
        if self.run > MAX_RUN:
            raise BadInputError(
                f"{path} counts {self.run - 1} agent starts, the most a message can carry",
                "enroll the camera again under a new id (its messages can no longer be ordered)",
            )
        write_atomic(path, f"{self.run}\n")  # before any message of this run goes out
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with the next place in this run (telemetry, alerts and job updates made from threads)."""
        with self._lock:
            return body | {"run": self.run, "seq": next(self._seq)}

    def last_will(self, body: dict[str, Any]) -> dict[str, Any]:
        return body | {"run": self.run, "seq": LAST_SEQ}


def _read_run(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    if not text.strip().isdigit():
        raise BadInputError(
            f"{path} holds {text[:40]!r}, not the count of agent starts",
            "restore it, or write a number larger than any run this camera sent (the fleet ignores older ones)",
        )
    return int(text)
