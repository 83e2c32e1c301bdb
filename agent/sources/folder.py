"""`type = "folder"`: images dropped into a folder (what many cameras do over FTP/SMB).

Files are taken in name order. Names starting with "." or ending in .tmp/.part/.partial are
skipped, so a writer should write under such a name and rename when complete. With
`delete_after` (the default) a file is deleted once its result is in the outbox; after a
crash it is handled again and yields the same alert ids (the key is name, size and mtime).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from edgefleet.agent.config import FolderSource
from edgefleet.agent.preprocess import MAX_FRAME_BYTES
from edgefleet.agent.sources import Frame, FrameSource, RateLimit

SKIP_SUFFIXES = (".tmp", ".part", ".partial")


class FolderFrameSource(FrameSource):
    def __init__(self, cfg: FolderSource) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self._seen: set[str] = set()  # without delete_after: names already handled in this run
        self._paths: dict[str, object] = {}

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        limit = RateLimit(self.cfg.max_fps)
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            batch = sorted(
                p
                for p in self.cfg.path.glob(self.cfg.pattern)
                if p.is_file()
                and not p.name.startswith(".")
                and not p.name.endswith(SKIP_SUFFIXES)
                and p.name not in self._seen
            )
            if not batch:
                stop.wait(self.cfg.poll_s)
                continue
            for path in batch:
                if not limit.wait(stop):
                    return
                try:
                    st = path.stat()
                    with open(path, "rb") as fh:
                        data = fh.read(MAX_FRAME_BYTES + 1)  # one byte over the cap is enough to refuse it
                except FileNotFoundError:
                    continue
                except OSError:
                    self.errors += 1
                    self._seen.add(path.name)
                    continue
                self._seen.add(path.name)
                key = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
                self._paths[key] = path
                yield Frame(data, key, self.name)

    def done(self, frame: Frame) -> None:
        path = self._paths.pop(frame.key, None)
        if path is not None and self.cfg.delete_after:
            path.unlink(missing_ok=True)
            self._seen.discard(path.name)
