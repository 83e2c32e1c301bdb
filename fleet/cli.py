"""`edgefleet fleet ...`: serve the fleet, and thin commands over its REST API.

Every API command prints a human table, or the API's JSON with --json.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from pydantic_core import to_jsonable_python

from edgefleet.cli import print_json as print_plain_json, table
from edgefleet.contracts.rest import (
    DeviceOut,
    DevicePage,
    EnrollmentTokenOut,
    ModelGroupPage,
    ModelVersionOut,
    ModelVersionPage,
    RolloutDetail,
    RolloutEventPage,
    RolloutOut,
    RolloutPage,
)


def _client(ctx: click.Context):
    from edgefleet.fleet.client import FleetClient

    return FleetClient(ctx.obj.get("url"), ctx.obj.get("token"))


def print_json(answer: object) -> None:
    """The API's JSON, as it sent it (field aliases such as an event's "from" included)."""
    print_plain_json(to_jsonable_python(answer, by_alias=True))


def _when(ts: float | None) -> str:
    return "-" if not ts else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


@click.group()
@click.option(
    "--url",
    envvar="EDGEFLEET_FLEET_URL",
    help="Fleet API URL [env EDGEFLEET_FLEET_URL; default http://127.0.0.1:8080].",
)
@click.option(
    "--token",
    envvar="EDGEFLEET_FLEET_TOKEN",
    help="API token [env EDGEFLEET_FLEET_TOKEN or EDGEFLEET_FLEET_TOKEN_FILE].",
)
@click.pass_context
def fleet(ctx: click.Context, url: str | None, token: str | None) -> None:
    """The fleet service: model registry, devices and over-the-air rollouts."""
    ctx.obj = {"url": url, "token": token}


@fleet.command("serve")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="Fleet config (TOML, see docs/fleet.md)."
)
def serve_command(config_path: Path | None) -> None:
    """Run the REST API, the MQTT bridge and the rollout engine (migrates the database first)."""
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.service import serve

    serve(load_config(config_path))


@fleet.group("tokens")
def tokens() -> None:
    """API tokens (made directly in the fleet database, so the first admin token can exist)."""


@tokens.command("create")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
@click.option("--name", required=True)
@click.option("--scope", type=click.Choice(["read-only", "operator", "admin"]), required=True)
def tokens_create(config_path: Path | None, name: str, scope: str) -> None:
    """Create a token and print it once (only its sha256 is stored)."""
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.core import open_fleet

    click.echo(create_token(open_fleet(load_config(config_path)), name, scope))


# ---- models --------------------------------------------------------------------------------


@fleet.group("models")
def models() -> None:
    """Model registry: groups, versions, builds, approvals."""


@models.command("list")
@json_option
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    rows = _client(ctx).pages("/models", ModelGroupPage)
    if as_json:
        return print_json(rows)
    table(["group", "versions", "latest"], [[r.name, r.versions, r.latest] for r in rows])


def _versions_table(rows: list[ModelVersionOut]) -> None:
    table(
        ["group", "version", "approval", "targets", "training job", "created"],
        [
            [
                r.group,
                r.version,
                r.approval,
                ", ".join(b.target for b in r.builds),
                r.lineage.training_job or "-",
                _when(r.created_at),
            ]
            for r in rows
        ],
    )


@models.command("versions")
@click.argument("group")
@json_option
@click.pass_context
def models_versions(ctx: click.Context, group: str, as_json: bool) -> None:
    rows = _client(ctx).pages(f"/models/{group}/versions", ModelVersionPage)
    print_json(rows) if as_json else _versions_table(rows)


@models.command("upload")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def models_upload(ctx: click.Context, package: Path, as_json: bool) -> None:
    """Upload a signed package; the fleet checks its signature and registers the build."""
    row = _client(ctx).upload(package)
    print_json(row) if as_json else _versions_table([row])


def _set_approval(ctx: click.Context, group: str, version: str, state: str, note: str, as_json: bool) -> None:
    row = _client(ctx).post(
        f"/models/{group}/versions/{version}/approval", ModelVersionOut, {"state": state, "note": note}
    )
    print_json(row) if as_json else _versions_table([row])


@models.command("approve")
@click.argument("group")
@click.argument("version")
@click.option("--note", default="")
@json_option
@click.pass_context
def models_approve(ctx: click.Context, group: str, version: str, note: str, as_json: bool) -> None:
    _set_approval(ctx, group, version, "Approved", note, as_json)


@models.command("reject")
@click.argument("group")
@click.argument("version")
@click.option("--note", default="")
@json_option
@click.pass_context
def models_reject(ctx: click.Context, group: str, version: str, note: str, as_json: bool) -> None:
    _set_approval(ctx, group, version, "Rejected", note, as_json)


# ---- agent releases ------------------------------------------------------------------------


@fleet.group("agent-releases")
def agent_releases() -> None:
    """Agent releases: the camera agent's own code and runtime, registered, approved and rolled out like models.

    Build one with `edgefleet agent release build`; see docs/agent.md, "Updating the agent over the air".
    """


@agent_releases.command("upload")
@click.argument("release", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def agent_releases_upload(ctx: click.Context, release: Path, as_json: bool) -> None:
    """Upload a signed agent release; the fleet checks its signature and registers its architecture's build."""
    row = _client(ctx).upload(release)
    print_json(row) if as_json else _versions_table([row])


@agent_releases.command("list")
@json_option
@click.pass_context
def agent_releases_list(ctx: click.Context, as_json: bool) -> None:
    """Agent releases the fleet holds, with their approval and architectures."""
    from edgefleet.agent_release import RELEASE_NAME

    rows = _client(ctx).pages(f"/models/{RELEASE_NAME}/versions", ModelVersionPage)
    print_json(rows) if as_json else _versions_table(rows)


@agent_releases.command("approve")
@click.argument("version")
@click.option("--note", default="")
@json_option
@click.pass_context
def agent_releases_approve(ctx: click.Context, version: str, note: str, as_json: bool) -> None:
    """Approve agent VERSION for rollouts."""
    from edgefleet.agent_release import RELEASE_NAME

    _set_approval(ctx, RELEASE_NAME, version, "Approved", note, as_json)


@agent_releases.command("reject")
@click.argument("version")
@click.option("--note", default="")
@json_option
@click.pass_context
def agent_releases_reject(ctx: click.Context, version: str, note: str, as_json: bool) -> None:
    """Reject agent VERSION: no new rollout may use it."""
    from edgefleet.agent_release import RELEASE_NAME

    _set_approval(ctx, RELEASE_NAME, version, "Rejected", note, as_json)


# ---- devices -------------------------------------------------------------------------------


@fleet.group("devices")
def devices() -> None:
    """Devices: enrollment, groups and tags, status."""


def _devices_table(rows: list[DeviceOut]) -> None:
    table(
        ["device", "group", "tags", "target", "status", "last seen", "model", "agent"],
        [
            [
                d.id,
                d.group or "-",
                ",".join(d.tags) or "-",
                d.target,
                d.status,
                _when(d.last_seen),
                f"{d.model.name} {d.model.version}" if d.model else "-",
                d.agent.version if d.agent else "-",
            ]
            for d in rows
        ],
    )


@devices.command("list")
@click.option("--group")
@click.option("--tag")
@click.option("--status", type=click.Choice(["online", "offline", "unknown"]))
@json_option
@click.pass_context
def devices_list(ctx: click.Context, group: str | None, tag: str | None, status: str | None, as_json: bool) -> None:
    rows = _client(ctx).pages("/devices", DevicePage, group=group, tag=tag, status=status)
    print_json(rows) if as_json else _devices_table(rows)


@devices.command("enroll-token")
@click.argument("device_id")
@click.option("--target", required=True, help="The device's target (rasp4b, x86_64, ...): which build it gets.")
@click.option("--group")
@click.option("--tag", "tags", multiple=True)
@click.pass_context
def devices_enroll_token(
    ctx: click.Context, device_id: str, target: str, group: str | None, tags: tuple[str, ...]
) -> None:
    """Create a one-time enrollment token for DEVICE_ID and print it."""
    click.echo(
        _client(ctx)
        .post(
            "/enrollment-tokens",
            EnrollmentTokenOut,
            {"device_id": device_id, "target": target, "group": group, "tags": list(tags)},
        )
        .token
    )


@devices.command("tag")
@click.argument("device_id")
@click.option("--add", multiple=True)
@click.option("--remove", multiple=True)
@click.option("--group", help="Move the device to this group ('' for none).")
@json_option
@click.pass_context
def devices_tag(
    ctx: click.Context, device_id: str, add: tuple[str, ...], remove: tuple[str, ...], group: str | None, as_json: bool
) -> None:
    row = _client(ctx).request(
        "PATCH",
        f"/devices/{device_id}",
        DeviceOut,
        json={"group": group, "add_tags": list(add), "remove_tags": list(remove)},
    )
    print_json(row) if as_json else _devices_table([row])


# ---- rollouts ------------------------------------------------------------------------------


@fleet.group("rollouts")
def rollouts() -> None:
    """Rollouts: waves, thresholds, health gates; pause, resume, abort."""


def _rollouts_table(rows: list[RolloutOut]) -> None:
    table(
        ["id", "model", "state", "wave", "devices", "installs", "reason"],
        [
            [
                r.id,
                f"{r.model.group} {r.model.version}",
                r.state,
                f"{r.wave + 1}/{len(r.waves)}",
                r.devices,
                " ".join(f"{k}={v}" for k, v in sorted(r.installs.items())) or "-",
                r.reason or "-",
            ]
            for r in rows
        ],
    )


@rollouts.command("create")
@click.argument("group")
@click.argument("version")
@click.option("--device-group", help="Select devices of this group.")
@click.option("--tag", "tags", multiple=True, help="Select devices carrying this tag (repeat: all of them).")
@click.option("--device", "device_ids", multiple=True, help="Select this device (repeatable).")
@click.option("--canary", type=int, help="Canary wave size in devices (default 1).")
@click.option("--canary-percent", type=float, help="Canary wave size in percent of the selection.")
@click.option("--waves", help="Cumulative percents after the canary, e.g. 10,50,100.")
@click.option("--success-threshold", type=float)
@click.option("--failure-threshold", type=float)
@click.option("--bake-time", type=float, help="Seconds each wave runs before the health gate.")
@click.option("--wave-timeout", type=float)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON rollout plan (see docs/fleet.md); flags override it.",
)
@json_option
@click.pass_context
def rollouts_create(
    ctx,
    group,
    version,
    device_group,
    tags,
    device_ids,
    canary,
    canary_percent,
    waves,
    success_threshold,
    failure_threshold,
    bake_time,
    wave_timeout,
    plan_file,
    as_json,
) -> None:
    """Roll GROUP VERSION out to the selected devices (GROUP `edgefleet-agent`: an agent release)."""
    plan = json.loads(plan_file.read_text()) if plan_file else {}
    flags = {
        "canary": canary,
        "canary_percent": canary_percent,
        "success_threshold": success_threshold,
        "failure_threshold": failure_threshold,
        "bake_time_s": bake_time,
        "wave_timeout_s": wave_timeout,
    }
    plan |= {k: v for k, v in flags.items() if v is not None}
    if waves:
        try:
            plan["waves"] = [float(w) for w in waves.split(",")]
        except ValueError:
            raise click.BadParameter("--waves is comma-separated percents, e.g. 10,50,100") from None
    selection = {"group": device_group, "tags": list(tags), "devices": list(device_ids) or None}
    row = _client(ctx).post(
        "/rollouts", RolloutOut, {"group": group, "version": version, "selection": selection, "plan": plan}
    )
    print_json(row) if as_json else _rollouts_table([row])


@rollouts.command("list")
@click.option("--state")
@json_option
@click.pass_context
def rollouts_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    rows = _client(ctx).pages("/rollouts", RolloutPage, state=state)
    print_json(rows) if as_json else _rollouts_table(rows)


@rollouts.command("show")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollouts_show(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    row = _client(ctx).get(f"/rollouts/{rollout_id}", RolloutDetail)
    if as_json:
        return print_json(row)
    _rollouts_table([row])
    table(
        ["device", "kind", "wave", "state", "previous", "detail"],
        [[d.device, d.kind, d.wave + 1, d.state, d.previous_version or "-", d.detail or "-"] for d in row.deployments],
    )


@rollouts.command("events")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollouts_events(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    rows = _client(ctx).pages(f"/rollouts/{rollout_id}/events", RolloutEventPage)
    if as_json:
        return print_json(rows)
    table(
        ["at", "event", "from", "to", "device", "detail"],
        [[_when(e.at), e.event, e.from_ or "-", e.to, e.device or "-", e.detail or "-"] for e in rows],
    )


def _control(action: str):
    @rollouts.command(action, help=f"{action.capitalize()} a rollout.")
    @click.argument("rollout_id", type=int)
    @click.option("--reason", default="")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, rollout_id: int, reason: str, as_json: bool) -> None:
        row = _client(ctx).post(f"/rollouts/{rollout_id}/{action}", RolloutOut, {"reason": reason})
        print_json(row) if as_json else _rollouts_table([row])

    return command


for _action in ("pause", "resume", "abort"):
    _control(_action)


from edgefleet.fleet.drift_cli import drift_command  # noqa: E402  (`edgefleet fleet drift`, docs/drift.md)

fleet.add_command(drift_command)
