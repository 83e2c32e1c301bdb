"""`edgefleet fleet alerts`: list alert events and save their snapshots (GET /api/v1/alerts...)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from edgefleet.cli import table
from edgefleet.contracts.rest import MAX_PAGE, AlertEventPage
from edgefleet.errors import BadInputError


def epoch(value: str | None) -> float | None:
    """A time given as epoch seconds or ISO 8601 (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(
            f"{value!r} is not a time", "give epoch seconds or ISO 8601, e.g. 2026-11-29T12:00:00Z"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


@click.group("alerts")
def alerts() -> None:
    """Alert events the cameras sent, with their snapshots (docs/fleet.md, "Alert events")."""


@alerts.command("list")
@click.option("--device", help="Only this camera.")
@click.option("--label", help="Only this label, e.g. person.")
@click.option("--since", help="Received at or after this time (ISO 8601 or epoch seconds).")
@click.option("--until", help="Received before this time (ISO 8601 or epoch seconds).")
@click.option("--model-version", help="Only alerts from this model version.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True, help="Events per page.")
@click.option("--cursor", help="The page after this one: the `next` a previous page printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
@click.pass_context
def alerts_list(ctx: click.Context, device, label, since, until, model_version, limit, cursor, as_json) -> None:
    """Alert events, newest first: camera, time, label, score, model version and snapshot.

    \b
    Examples:
      edgefleet fleet alerts list --device cam-3 --label person --since 2026-11-29T08:00:00Z
      edgefleet fleet alerts list --model-version 2 --limit 100 --json
      edgefleet fleet alerts list --limit 20 --cursor 4812   # the page after the one whose `next` was 4812
    """
    from edgefleet.fleet.cli import _client, _when, print_json

    page = _client(ctx).get(
        "/alerts",
        AlertEventPage,
        device=device,
        label=label,
        since=epoch(since),
        until=epoch(until),
        model_version=model_version,
        limit=limit,
        cursor=cursor,
    )
    if as_json:
        print_json(page)
        return
    table(
        ["id", "received", "device", "label", "score", "boxes", "model", "snapshot", "rule"],
        [
            [
                e.id,
                _when(e.received_at),
                e.device,
                e.label,
                f"{e.score:.2f}",
                len(e.boxes),
                f"{e.model.name} {e.model.version}" if e.model else "-",
                "-" if e.snapshot is None else ("stored" if e.snapshot.stored else "waiting"),
                e.rule or "-",
            ]
            for e in page.items
        ],
        title=f"alert events, newest first (next page: --cursor {page.next})" if page.next else "alert events",
    )


@alerts.command("snapshot")
@click.argument("event_id", type=click.IntRange(1))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JPEG to write.")
@click.pass_context
def alerts_snapshot(ctx: click.Context, event_id: int, output: Path) -> None:
    """Save the snapshot (JPEG) of alert event EVENT_ID (the id `alerts list` shows) to a file.

    \b
    Examples:
      edgefleet fleet alerts snapshot 42 -o alert-42.jpg
    """
    from edgefleet.fleet.cli import _client
    from edgefleet.fleet.client import error_from

    client = _client(ctx)
    resp = client.http.get(f"/api/v1/alerts/{event_id}/snapshot", follow_redirects=True)
    if resp.status_code >= 400:
        raise error_from(resp)
    output.write_bytes(resp.content)
    click.echo(f"wrote {output} ({len(resp.content)} bytes)")
