"""Moves outbox rows to the transport in seq order, at most `window` awaiting their PUBACK."""

from __future__ import annotations

import threading
import time

from edgefleet.agent.outbox import Outbox
from edgefleet.agent.transports.base import Transport


class Sender(threading.Thread):
    def __init__(self, outbox: Outbox, transport: Transport, window: int) -> None:
        super().__init__(name="sender", daemon=True)
        self.outbox = outbox
        self.transport = transport
        self.window = window
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._inflight: set[int] = set()
        self._acked_seqs: list[int] = []
        self.acked = 0

    def _flush_acks(self) -> None:
        with self._cond:
            acked, self._acked_seqs = self._acked_seqs, []
        if acked:
            self.outbox.ack_many(acked)
            with self._cond:
                self._inflight.difference_update(acked)
                self.acked += len(acked)

    def run(self) -> None:
        last = 0
        was_down = True
        while not self.stop_event.is_set():
            self._flush_acks()
            # Hand nothing over while disconnected, and after a (re)connect let the messages handed
            # before it be acked first: paho runs on_connect before it resends its queue, so a new
            # publish in between would overtake older alerts.
            if not self.transport.connected.is_set():
                was_down = True
                self.transport.connected.wait(0.2)
                continue
            with self._cond:
                if was_down and self._inflight:
                    self._cond.wait(0.2)
                    continue
                was_down = False
                if len(self._inflight) >= self.window:
                    if not self._acked_seqs:
                        self._cond.wait(0.5)
                    continue
                room = self.window - len(self._inflight)
            batch = self.outbox.pending(after_seq=last, limit=room)
            if not batch:
                self.outbox.wait_for_pending(last, 0.5)
                continue
            for msg in batch:
                with self._cond:
                    self._inflight.add(msg.seq)
                self.outbox.mark_handed(msg.seq)
                # The transport keeps the message while disconnected and sends it, in order, after reconnecting.
                self.transport.publish(msg.topic, msg.payload, on_ack=lambda seq=msg.seq: self._acked(seq))
                last = msg.seq

    def _acked(self, seq: int) -> None:
        # Runs on the network thread: only note it; the sender thread writes acks in batches.
        with self._cond:
            self._acked_seqs.append(seq)
            self._cond.notify_all()
        self.outbox.wake()

    def drain(self, timeout: float) -> bool:
        """Wait until every stored message is acked (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.stats()["pending"] == 0:
                return True
            time.sleep(0.05)
        return self.outbox.stats()["pending"] == 0

    def stop(self) -> None:
        self.stop_event.set()
        self.outbox.wake()
        self.join(timeout=5)
        self._flush_acks()
