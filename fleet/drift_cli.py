"""`edgefleet fleet drift`: each device's drift alarm and a sparkline of its recent windows.

Maps onto GET /api/v1/drift and /api/v1/drift/windows (edgefleet.fleet.drift_service).
"""

from __future__ import annotations

import click

from edgefleet.cli import print_json, table
from edgefleet.fleet.drift import sparkline


def drift_report(client, device: str | None, windows: int) -> dict:
    """What the command shows: the API's overview plus each alarm's last `windows` scores."""
    # The drift endpoints have no response models yet (fleet/drift_service.py): plain JSON.
    overview = client.get("/drift", dict, device=device)
    rows = client.get("/drift/windows", list, device=device, limit=5000)
    for alarm in overview["alarms"]:
        scores = [w["score"] for w in rows if w["device"] == alarm["device"] and w["model"] == alarm["model"]]
        alarm["recent_scores"] = scores[-windows:]
    return overview


@click.command("drift")
@click.option("--device", help="Only this device.")
@click.option(
    "--windows", type=click.IntRange(1, 200), default=30, show_default=True, help="Windows in each sparkline."
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
@click.pass_context
def drift_command(ctx: click.Context, device: str | None, windows: int, as_json: bool) -> None:
    """Drift alarms per device and model version, with a sparkline of the drift score.

    The sparkline spans 0 to twice the threshold, so the threshold sits at mid height.

    \b
    Examples:
      edgefleet fleet drift
      edgefleet fleet drift --device cam-3 --windows 60
    """
    from edgefleet.fleet.client import FleetClient

    client = FleetClient(ctx.obj.get("url"), ctx.obj.get("token"))
    report = drift_report(client, device, windows)
    if as_json:
        print_json(report)
        return
    cfg = report["config"]
    top = 2 * cfg["threshold"]
    table(
        ["device", "model", "state", "score", "feature", f"last {windows} windows"],
        [
            [
                a["device"],
                f"{a['model']['name']} {a['model']['version']}",
                a["state"],
                "-" if a["score"] is None else f"{a['score']:.3f}",
                a["feature"] or "-",
                sparkline(a["recent_scores"], top),
            ]
            for a in report["alarms"]
        ],
        title=f"drift ({cfg['metric']}, alarm over {cfg['threshold']} for {cfg['windows_to_alarm']} windows, clear after {cfg['windows_to_clear']})",
    )
    if report.get("collecting"):
        table(
            ["device", "model", "collecting"],
            [
                [c["device"], f"{c['model']['name']} {c['model']['version']}", f"{c['frames']} of {c['target']} frames"]
                for c in report["collecting"]
            ],
            title="windows still collecting frames (judged once they hold min_frames)",
        )
    if report["fleet"] and not device:
        table(
            ["model", "devices", "frames", "score", "feature", "over", "alarm"],
            [
                [
                    f"{f['model']['name']} {f['model']['version']}",
                    f["devices"],
                    f["frames"],
                    f"{f['score']:.3f}",
                    f["feature"] or "-",
                    "yes" if f["over"] else "no",
                    f.get("state", "-"),
                ]
                for f in report["fleet"]
            ],
            title=f"the fleet as a whole (newest window of each device; alarm when {cfg.get('fleet_share', '-')} of them are over)",
        )
