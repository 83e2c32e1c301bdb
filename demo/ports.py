"""The demo's ports: checked before minutes of training start, and when one is taken the error
names the process that holds it."""

from __future__ import annotations

import socket

import psutil

from edgefleet.errors import UsageError
from edgefleet.net import free_port

HOST = "127.0.0.1"  # where the demo's fleet service and broker listen


def check_port(port: int, option: str) -> int:
    """`port` if the demo can listen on it (a free one for 0), else a UsageError naming its holder."""
    if port == 0:
        return free_port()
    with socket.socket() as probe:
        # Bound as the services bind (uvicorn and mosquitto set SO_REUSEADDR): connections of a
        # run just stopped, waiting out TIME_WAIT, do not make the port taken; a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise port_taken(port, option) from None
    return port


def port_taken(port: int, option: str) -> UsageError:
    other = f"or pass {option} with another port (0 picks a free one)"
    holders = port_holders(port)
    if not holders:
        return UsageError(
            f"port {port} ({option}) is in use by a process this user cannot see",
            f"find it with `sudo ss -ltnp 'sport = :{port}'` and stop it, {other}",
        )
    pids = " ".join(str(pid) for pid in holders)
    listed = "; ".join(f"pid {pid} ({command})" for pid, command in holders.items())
    return UsageError(f"port {port} ({option}) is in use by {listed}", f"stop it (kill {pids}), {other}")


def port_holders(port: int) -> dict[int, str]:
    """pid -> command line of each process with a TCP socket on local `port` that this user may see
    (Linux lists other users' sockets without their pid unless run as root)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # macOS: listing sockets needs root
        return {}
    # Listeners first: they are what the demo's services collide with.
    ordered = sorted(connections, key=lambda c: c.status != psutil.CONN_LISTEN)
    pids = [c.pid for c in ordered if c.laddr and c.laddr.port == port and c.pid]
    return {pid: command_of(pid) for pid in dict.fromkeys(pids)}


def command_of(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        command = " ".join(" ".join(process.cmdline()).split()) or process.name()  # one line
    except psutil.Error:  # it exited meanwhile, or its command line is not ours to read
        return "command unknown"
    return command if len(command) <= 160 else command[:157] + "..."
