"""The demo's port check, without running the demo: a taken port is reported with the process
that holds it, and a port its previous run just freed is not taken."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from edgefleet.demo.ports import check_port
from edgefleet.errors import UsageError
from edgefleet.net import free_port

# A process that listens on the port given as its argument, as a fleet service left running would.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening', flush=True); time.sleep(60)\n"
)


@pytest.fixture
def held_port():
    """(port, process) with another process listening on the port."""
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout.readline().strip() == "listening"
        yield port, holder
    finally:
        holder.terminate()
        holder.wait(timeout=10)
        holder.stdout.close()


def test_a_taken_port_names_the_process_that_holds_it(held_port):
    port, holder = held_port
    with pytest.raises(UsageError) as caught:
        check_port(port, "--http-port")
    error = caught.value
    assert f"port {port} (--http-port) is in use by pid {holder.pid} ({sys.executable} -c import socket" in error.cause
    assert f"kill {holder.pid}" in error.fix and "--http-port" in error.fix


def test_a_port_whose_last_connection_waits_out_time_wait_is_free():
    # A stopped run's server side closed its connections first: they sit in TIME_WAIT for a
    # minute. The services bind with SO_REUSEADDR, so the port is theirs to take again.
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what the check used to do
        plain.bind(("127.0.0.1", port))
    assert check_port(port, "--http-port") == port


def test_port_zero_picks_a_free_port():
    port = check_port(0, "--mqtt-port")
    assert port > 0 and check_port(port, "--mqtt-port") == port
