"""`edgefleet fleet drift`: each device's drift alarm and a sparkline of its recent windows.

Maps onto GET /api/v1/drift and /api/v1/drift/windows (fleet/routers/drift.py), parsed into
their answer models (edgefleet/contracts/rest.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from edgefleet.cli import print_json, table
from edgefleet.contracts.rest import MAX_PAGE, DriftOverview, DriftWindowPage
from edgefleet.fleet.drift import sparkline

if TYPE_CHECKING:
    from edgefleet.fleet.client import FleetClient


def drift_report(client: FleetClient, device: str | None, windows: int) -> tuple[DriftOverview, list[list[float]]]:
    """What the command shows: the API's overview, and each alarm's last `windows` scores."""
    overview = client.get("/drift", DriftOverview, device=device)
    scores: dict[tuple[str, str, str], list[float]] = {
        (a.device, a.model.name, a.model.version): [] for a in overview.alarms
    }
    cursor = None
    while True:  # pages come newest first: read on until every alarm has its windows, or none are left
        page = client.get("/drift/windows", DriftWindowPage, device=device, limit=MAX_PAGE, cursor=cursor)
        for w in page.items:
            got = scores.get((w.device, w.model.name, w.model.version))
            if got is not None and len(got) < windows:
                got.append(w.score)
        cursor = page.next
        if cursor is None or all(len(got) == windows for got in scores.values()):
            break
    return overview, [scores[(a.device, a.model.name, a.model.version)][::-1] for a in overview.alarms]


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
    report, recent = drift_report(client, device, windows)
    if as_json:
        body = report.model_dump(mode="json")
        for alarm, scores in zip(body["alarms"], recent):
            alarm["recent_scores"] = scores
        print_json(body)
        return
    cfg = report.config
    table(
        ["device", "model", "state", "score", "feature", f"last {windows} windows"],
        [
            [
                a.device,
                f"{a.model.name} {a.model.version}",
                a.state,
                "-" if a.score is None else f"{a.score:.3f}",
                a.feature or "-",
                sparkline(list(scores), 2 * cfg.threshold),
            ]
            for a, scores in zip(report.alarms, recent)
        ],
        title=f"drift ({cfg.metric}, alarm over {cfg.threshold} for {cfg.windows_to_alarm} windows, clear after {cfg.windows_to_clear})",
    )
    if report.collecting:
        table(
            ["device", "model", "collecting"],
            [
                [c.device, f"{c.model.name} {c.model.version}", f"{c.frames} of {c.target} frames"]
                for c in report.collecting
            ],
            title="windows still collecting frames (judged once they hold min_frames)",
        )
    if report.fleet and not device:
        table(
            ["model", "devices", "frames", "score", "feature", "over", "alarm"],
            [
                [
                    f"{f.model.name} {f.model.version}",
                    f.devices,
                    f.frames,
                    f"{f.score:.3f}",
                    f.feature or "-",
                    "yes" if f.over else "no",
                    f.state,
                ]
                for f in report.fleet
            ],
            title=f"the fleet as a whole (newest window of each device; alarm when {cfg.fleet_share} of them are over)",
        )
