"""One agent-side update run in its own process, as the agent does it: load the active model,
resume the journal, then handle one job. Used by the fault tests, which SIGKILL it mid-update
through EDGEFLEET_UPDATE_FAULT and run it again.

    python update_proc.py STATE_DIR TRUSTED.pub DEVICE_ID [JOB.json]
Prints one JSON line: {"resumed": state, "handled": state, "active": "name-version", "output_ok": bool}.
"""

import json
import sys
from pathlib import Path

import numpy as np

from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.update import UpdateManager
from edgefleet.signing import load_public_key

state_dir, pub, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
trusted = [load_public_key(pub)]
slot = ModelSlot(state_dir, trusted)
if slot.current_dir() is not None:
    try:
        slot.reload()
    except Exception as exc:  # resume() repairs a bad `current`
        print(f"initial load failed: {exc}", file=sys.stderr)
published = state_dir / "published.jsonl"


def publish(suffix: str, payload: dict) -> None:
    with open(published, "a") as fh:
        fh.write(json.dumps({"topic": suffix, **payload}) + "\n")


manager = UpdateManager(state_dir, slot, publish, trusted, device)
resumed = manager.resume()
handled = manager.handle_notify(json.loads(Path(sys.argv[4]).read_text())) if len(sys.argv) > 4 else None
active = slot.active
outputs = active.model.run([np.random.default_rng(0).random(s.shape).astype(s.dtype) for s in active.manifest.inputs])
print(
    json.dumps(
        {
            "resumed": resumed,
            "handled": handled,
            "active": f"{active.manifest.name}-{active.manifest.version}",
            "output_ok": bool(np.all(np.isfinite(outputs[0]))),
        }
    )
)
