"""`edgefleet demo`: the command's options and its summary of the run (demo/run.py)."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.demo.run import DemoOptions, console, run_demo
from edgefleet.errors import ServiceError


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path(".edgefleet-demo"),
    show_default=True,
    help="Where the demo keeps its models, fleet and cameras (reused on the next run).",
)
@click.option("--devices", type=click.IntRange(1, 20), default=3, show_default=True, help="How many cameras to run.")
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Fleet API and dashboard port (0: any free port).",
)
@click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=8883,
    show_default=True,
    help="Broker port (0: any free port).",
)
@click.option(
    "--fps",
    "frames_per_second",
    type=click.FloatRange(0.1, 20),
    default=5.0,
    show_default=True,
    help="Frames per second fed to each camera.",
)
@click.option(
    "--detector-cameras",
    "detector_devices",
    type=click.IntRange(0, 10),
    default=1,
    show_default=True,
    help="Extra cameras (group detect) that run the scene detector.",
)
@click.option(
    "--shadow/--no-shadow",
    default=True,
    show_default=True,
    help="Run v2 in shadow beside v1 (compared on every frame, never alerting) until its promotion"
    " gate passes, then promote it to its canary; --no-shadow rolls v2 out with a canary at once.",
)
@click.option(
    "--exit-after-rollouts",
    is_flag=True,
    help="Stop after the second rollout and the night scene (for CI) instead of running until Ctrl-C.",
)
def demo_command(
    workdir: Path,
    devices: int,
    http_port: int,
    mqtt_port: int,
    frames_per_second: float,
    detector_devices: int,
    shadow: bool,
    exit_after_rollouts: bool,
) -> None:
    """Train, compile, deploy and watch: the whole system on this machine.

    \b
    Examples:
      edgefleet demo
      edgefleet demo --devices 5 --http-port 0 --mqtt-port 0 --exit-after-rollouts
      edgefleet demo --no-shadow
    """
    result = run_demo(
        DemoOptions(
            workdir, devices, http_port, mqtt_port, frames_per_second, exit_after_rollouts, detector_devices, shadow
        )
    )
    states = [r["state"] for r in result.rollouts]
    by_label: dict[str, int] = {}
    for alert in result.alerts:
        by_label[alert.get("label", "?")] = by_label.get(alert.get("label", "?"), 0) + 1
    console.print(f"rollouts: {', '.join(states) or 'none'}; alerts received: {len(result.alerts)} {by_label}")
    if result.detector_rollout is not None:
        console.print(
            f"detector rollout: {result.detector_rollout['state']}; alerts with boxes from the detector cameras: {len(result.detections)}"
        )
    if result.drift:
        d = result.drift
        console.print(
            f"drift on {d['device']}: raised {d['raised_after_s']:.0f} s after dark, cleared "
            f"{d['cleared_after_s']:.0f} s after the light came back; false alarms elsewhere: {d['false_alarms']}"
        )
    if detector_devices and result.detector_rollout is not None:
        states = [result.detector_rollout["state"], *states]
    if exit_after_rollouts and (len(states) < 2 or any(s != "succeeded" for s in states)):
        raise ServiceError(f"the demo's rollouts ended {states}", f"see the logs in {workdir / 'logs'}")
