"""`edgefleet fleet ...`: serve the fleet, and thin commands over its REST API.

Every API command prints a human table, or the API's JSON with --json.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from pydantic_core import to_jsonable_python

from edgefleet.cli import print_json as print_plain_json
from edgefleet.cli import table
from edgefleet.contracts.rest import (
    DeploymentPage,
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
    ShadowOut,
    ShadowStats,
)
from edgefleet.logs import LOG_FORMATS


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
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="Log lines as plain text or one JSON object per line [default: the config's log_format, else text].",
)
def serve_command(config_path: Path | None, log_format: str | None) -> None:
    """Run the REST API, the MQTT bridge and the rollout engine (migrates the database first).

    Prometheus metrics are served at /metrics (docs/fleet.md, "Metrics and logs").

    \b
    Examples:
      edgefleet fleet serve                         # SQLite and packages under ~/.edgefleet/fleet
      edgefleet fleet serve --config /etc/edgefleet/fleet.toml --log-format json
    """
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.service import serve

    config = load_config(config_path)
    if log_format:
        config.log_format = log_format  # click.Choice checked it
    serve(config)


@fleet.command("unit")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet config the service runs with (the unit names its absolute path).",
)
@click.option(
    "--user", default="edgefleet-fleet", show_default=True, help="Unprivileged system account the service runs as."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the unit here (e.g. /etc/systemd/system/edgefleet-fleet.service) instead of printing it.",
)
def unit_command(config_path: Path, user: str, output: Path | None) -> None:
    """Print (or write) a systemd unit that runs `fleet serve --config` as an unprivileged, sandboxed service.

    The unit runs this installation's Python; the folders the config writes to are the only
    writable ones (docs/fleet.md, "Running as a service").

    \b
    Examples:
      edgefleet fleet unit --config /etc/edgefleet/fleet.toml
      useradd --system --home-dir /var/lib/edgefleet-fleet edgefleet-fleet
      edgefleet fleet unit --config /etc/edgefleet/fleet.toml --output /etc/systemd/system/edgefleet-fleet.service
      systemctl daemon-reload && systemctl enable --now edgefleet-fleet
    """
    from edgefleet.fleet.systemd import load_as_service, unit_text

    config_path = config_path.resolve()
    text = unit_text(config_path, load_as_service(config_path), user)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"wrote {output}; then: systemctl daemon-reload && systemctl enable --now {output.stem}")


@fleet.command("server-cert")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet config whose CA (<data_dir>/ca) signs the certificate.",
)
@click.option(
    "--host",
    "hosts",
    required=True,
    multiple=True,
    help="DNS name or IP address devices and operators reach the fleet at (the host of public_url); repeat for each.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write server.key (mode 0600), server.pem and ca.pem into.",
)
def server_cert_command(config_path: Path, hosts: tuple[str, ...], out: Path) -> None:
    """Issue the fleet's HTTPS certificate from the fleet CA, for `fleet serve` to terminate TLS itself.

    Point tls_cert_file and tls_key_file at server.pem and server.key, and give cameras ca.pem as
    [fleet] ca_file (docs/security.md, "Fleet HTTPS"). A certificate from another CA works as well.

    \b
    Examples:
      edgefleet fleet server-cert --config /etc/edgefleet/fleet.toml --host fleet.example.lan --out /etc/edgefleet/tls
      edgefleet fleet server-cert --config fleet.toml --host fleet.lan --host 192.168.1.10 --out ./tls
    """
    from edgefleet.fleet.ca import CertificateAuthority, write_private
    from edgefleet.fleet.config import load_config

    authority = CertificateAuthority.load_or_create(load_config(config_path).data_dir / "ca")  # as devices.ca
    key, cert = authority.issue_key_and_cert(hosts[0], server_names=list(hosts))
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / "server.key", key)
    (out / "server.pem").write_bytes(cert)
    (out / "ca.pem").write_text(authority.cert_pem)
    click.echo(f"wrote {out}/server.key, server.pem (for {', '.join(hosts)}) and ca.pem (the cameras' [fleet] ca_file)")


@fleet.group("tokens")
def tokens() -> None:
    """API tokens (made directly in the fleet database, so the first admin token can exist)."""


@tokens.command("create")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Fleet config (TOML) naming the database [default: ~/.edgefleet/fleet].",
)
@click.option("--name", required=True, help="Who or what the token is for (shown in listings, used to revoke it).")
@click.option(
    "--scope",
    type=click.Choice(["read-only", "operator", "admin"]),
    required=True,
    help="read-only reads; operator also uploads and runs rollouts; admin also approves, enrolls, manages tokens.",
)
def tokens_create(config_path: Path | None, name: str, scope: str) -> None:
    """Create a token and print it once (only its sha256 is stored).

    Run it on the fleet's machine: it writes to the fleet database directly.

    \b
    Examples:
      edgefleet fleet tokens create --config /etc/edgefleet/fleet.toml --name ops --scope admin
      export EDGEFLEET_FLEET_TOKEN=$(edgefleet fleet tokens create --name ci --scope operator)
    """
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
    """Model groups with their number of versions and the latest one.

    \b
    Examples:
      edgefleet fleet models list
      edgefleet fleet models list --json
    """
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
    """Versions of model GROUP: approval, targets built, training job.

    \b
    Examples:
      edgefleet fleet models versions scenes
    """
    rows = _client(ctx).pages(f"/models/{group}/versions", ModelVersionPage)
    print_json(rows) if as_json else _versions_table(rows)


@models.command("upload")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def models_upload(ctx: click.Context, package: Path, as_json: bool) -> None:
    """Upload PACKAGE (a signed .tar.gz); the fleet checks its signature and registers the build.

    \b
    Examples:
      edgefleet fleet models upload scenes-2-rasp4b.tar.gz
    """
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
@click.option("--note", default="", help="Why, for the audit trail.")
@json_option
@click.pass_context
def models_approve(ctx: click.Context, group: str, version: str, note: str, as_json: bool) -> None:
    """Approve GROUP VERSION so rollouts may use it (admin scope).

    \b
    Examples:
      edgefleet fleet models approve scenes 2 --note "passed the lobby trial"
    """
    _set_approval(ctx, group, version, "Approved", note, as_json)


@models.command("reject")
@click.argument("group")
@click.argument("version")
@click.option("--note", default="", help="Why, for the audit trail.")
@json_option
@click.pass_context
def models_reject(ctx: click.Context, group: str, version: str, note: str, as_json: bool) -> None:
    """Reject GROUP VERSION: no new rollout may use it (admin scope).

    \b
    Examples:
      edgefleet fleet models reject scenes 3 --note "misses people at night"
    """
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
    """Upload RELEASE (from `edgefleet agent release build`); the fleet checks its signature and registers its architecture's build.

    \b
    Examples:
      edgefleet fleet agent-releases upload edgefleet-agent-0.3.0-aarch64.tar.gz
    """
    row = _client(ctx).upload(release)
    print_json(row) if as_json else _versions_table([row])


@agent_releases.command("list")
@json_option
@click.pass_context
def agent_releases_list(ctx: click.Context, as_json: bool) -> None:
    """Agent releases the fleet holds, with their approval and architectures.

    \b
    Examples:
      edgefleet fleet agent-releases list
    """
    from edgefleet.agent_release import RELEASE_NAME

    rows = _client(ctx).pages(f"/models/{RELEASE_NAME}/versions", ModelVersionPage)
    print_json(rows) if as_json else _versions_table(rows)


@agent_releases.command("approve")
@click.argument("version")
@click.option("--note", default="", help="Why, for the audit trail.")
@json_option
@click.pass_context
def agent_releases_approve(ctx: click.Context, version: str, note: str, as_json: bool) -> None:
    """Approve agent VERSION for rollouts (admin scope).

    \b
    Examples:
      edgefleet fleet agent-releases approve 0.3.0 --note "soaked on the bench cameras"
    """
    from edgefleet.agent_release import RELEASE_NAME

    _set_approval(ctx, RELEASE_NAME, version, "Approved", note, as_json)


@agent_releases.command("reject")
@click.argument("version")
@click.option("--note", default="", help="Why, for the audit trail.")
@json_option
@click.pass_context
def agent_releases_reject(ctx: click.Context, version: str, note: str, as_json: bool) -> None:
    """Reject agent VERSION: no new rollout may use it (admin scope).

    \b
    Examples:
      edgefleet fleet agent-releases reject 0.3.1 --note "crashes on armv7"
    """
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
@click.option("--group", help="Only devices in this group.")
@click.option("--tag", help="Only devices carrying this tag.")
@click.option("--status", type=click.Choice(["online", "offline", "unknown"]), help="Only devices in this state.")
@json_option
@click.pass_context
def devices_list(ctx: click.Context, group: str | None, tag: str | None, status: str | None, as_json: bool) -> None:
    """Enrolled devices: group, tags, target, status, last seen, model and agent versions.

    \b
    Examples:
      edgefleet fleet devices list
      edgefleet fleet devices list --group lobby --status offline
    """
    rows = _client(ctx).pages("/devices", DevicePage, group=group, tag=tag, status=status)
    print_json(rows) if as_json else _devices_table(rows)


@devices.command("enroll-token")
@click.argument("device_id")
@click.option("--target", required=True, help="The device's target (rasp4b, x86_64, ...): which build it gets.")
@click.option("--group", help="Group the device joins (rollouts select by group).")
@click.option("--tag", "tags", multiple=True, help="Tag the device carries (repeatable).")
@click.pass_context
def devices_enroll_token(
    ctx: click.Context, device_id: str, target: str, group: str | None, tags: tuple[str, ...]
) -> None:
    """Create a one-time enrollment token for DEVICE_ID and print it (admin scope).

    Give it to `edgefleet agent install --enroll-token-file` on the camera.

    \b
    Examples:
      edgefleet fleet devices enroll-token cam-7 --target rasp4b --group lobby --tag door > cam-7.token
    """
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
@click.option("--add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", multiple=True, help="Tag to remove (repeatable).")
@click.option("--group", help="Move the device to this group ('' for none).")
@json_option
@click.pass_context
def devices_tag(
    ctx: click.Context, device_id: str, add: tuple[str, ...], remove: tuple[str, ...], group: str | None, as_json: bool
) -> None:
    """Change DEVICE_ID's tags or group (operator scope).

    \b
    Examples:
      edgefleet fleet devices tag cam-7 --add night --remove door
      edgefleet fleet devices tag cam-7 --group parking
    """
    row = _client(ctx).request(
        "PATCH",
        f"/devices/{device_id}",
        DeviceOut,
        json={"group": group, "add_tags": list(add), "remove_tags": list(remove)},
    )
    print_json(row) if as_json else _devices_table([row])


@devices.command("revoke")
@click.argument("device_id")
@json_option
@click.pass_context
def devices_revoke(ctx: click.Context, device_id: str, as_json: bool) -> None:
    """Revoke DEVICE_ID for good (admin scope): the broker disconnects it and refuses it.

    Its history stays and it lists as `revoked`; the id cannot enroll again.

    \b
    Examples:
      edgefleet fleet devices revoke cam-7
    """
    row = _client(ctx).post(f"/devices/{device_id}/revoke", DeviceOut)
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
@click.option(
    "--mode",
    type=click.Choice(["install", "shadow"]),
    help="shadow: run VERSION beside each camera's active model until promoted or stopped (docs/fleet.md).",
)
@click.option("--canary", type=int, help="Canary wave size in devices (default 1).")
@click.option("--canary-percent", type=float, help="Canary wave size in percent of the selection.")
@click.option("--waves", help="Cumulative percents after the canary, e.g. 10,50,100.")
@click.option(
    "--success-threshold", type=float, help="Share of a wave's devices that must install for the wave to pass (0-1)."
)
@click.option(
    "--failure-threshold", type=float, help="Share of a wave's devices whose failure aborts the rollout (0-1)."
)
@click.option("--bake-time", type=float, help="Seconds each wave runs before the health gate.")
@click.option("--wave-timeout", type=float, help="Seconds a wave may take before the rollout aborts.")
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
    mode,
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
    """Roll GROUP VERSION out to the selected devices (GROUP `edgefleet-agent`: an agent release).

    \b
    Examples:
      edgefleet fleet rollouts create scenes 2 --device-group lobby --canary 1 --waves 50,100
      edgefleet fleet rollouts create scenes 2 --tag door --bake-time 600 --plan plan.json
      edgefleet fleet rollouts create edgefleet-agent 0.3.0 --device-group lobby
      edgefleet fleet rollouts create scenes 3 --device-group lobby --mode shadow
    """
    plan = json.loads(plan_file.read_text()) if plan_file else {}
    flags = {
        "mode": mode,
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
@click.option(
    "--state", help="Only rollouts in this state (deploying, baking, paused, succeeded, aborted, shadowing, ...)."
)
@json_option
@click.pass_context
def rollouts_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Rollouts: model, state, wave, devices, installs and the reason of the last change.

    \b
    Examples:
      edgefleet fleet rollouts list
      edgefleet fleet rollouts list --state baking
    """
    rows = _client(ctx).pages("/rollouts", RolloutPage, state=state)
    print_json(rows) if as_json else _rollouts_table(rows)


@rollouts.command("show")
@click.argument("rollout_id", type=int)
@click.option("--state", help="Only the deployments in this state (committed, failed, rolled_back, ...).")
@json_option
@click.pass_context
def rollouts_show(ctx: click.Context, rollout_id: int, state: str | None, as_json: bool) -> None:
    """Rollout ROLLOUT_ID and the state of its deployment on each device.

    \b
    Examples:
      edgefleet fleet rollouts show 4
      edgefleet fleet rollouts show 4 --state failed --json
    """
    client = _client(ctx)
    row = client.get(f"/rollouts/{rollout_id}", RolloutDetail)
    deployments = client.pages(f"/rollouts/{rollout_id}/deployments", DeploymentPage, state=state)
    if as_json:  # the rollout with its deployments, one document for scripts
        return print_json(to_jsonable_python(row, by_alias=True) | {"deployments": deployments})
    _rollouts_table([row])
    table(
        ["device", "kind", "wave", "state", "previous", "detail"],
        [[d.device, d.kind, d.wave + 1, d.state, d.previous_version or "-", d.detail or "-"] for d in deployments],
    )


@rollouts.command("events")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollouts_events(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    """The audit trail of rollout ROLLOUT_ID: every state change, of the rollout and of each device.

    \b
    Examples:
      edgefleet fleet rollouts events 4 --json
    """
    rows = _client(ctx).pages(f"/rollouts/{rollout_id}/events", RolloutEventPage)
    if as_json:
        return print_json(rows)
    table(
        ["at", "event", "from", "to", "device", "detail"],
        [[_when(e.at), e.event, e.from_ or "-", e.to, e.device or "-", e.detail or "-"] for e in rows],
    )


CONTROL_HELP = {
    "pause": "Pause rollout ROLLOUT_ID: no new devices get the update until it is resumed",
    "resume": "Resume the paused rollout ROLLOUT_ID",
    "abort": "Abort rollout ROLLOUT_ID and roll every device it touched back to its previous version"
    " (a shadow rollout: remove its candidate from the cameras)",
    "stop": "Stop shadow rollout ROLLOUT_ID: its cameras remove the candidate and keep their active model",
}
CONTROL_EXAMPLE = {
    "pause": "holiday freeze",
    "resume": "freeze over",
    "abort": "alerts dropped in the canary",
    "stop": "enough evidence",
}


def _control(action: str):
    @rollouts.command(
        action,
        help=f'{CONTROL_HELP[action]} (operator scope).\n\n\b\nExamples:\n  edgefleet fleet rollouts {action} 4 --reason "{CONTROL_EXAMPLE[action]}"',
    )
    @click.argument("rollout_id", type=int)
    @click.option("--reason", default="", help="Why, for the audit trail.")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, rollout_id: int, reason: str, as_json: bool) -> None:
        row = _client(ctx).post(f"/rollouts/{rollout_id}/{action}", RolloutOut, {"reason": reason})
        print_json(row) if as_json else _rollouts_table([row])

    return command


for _action in ("pause", "resume", "abort", "stop"):
    _control(_action)


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _shadow_row(name: str, st: ShadowStats) -> list[object]:
    return [
        name,
        st.devices,
        st.frames,
        _num(st.agreement),
        _num(st.active_latency_p50_ms, "{:.1f}"),
        _num(st.candidate_latency_p50_ms, "{:.1f}"),
        _num(st.latency_ratio, "{:.2f}"),
        _num(st.active_confidence),
        _num(st.candidate_confidence),
        "ALARM" if st.drift_alarm else "ok",
    ]


@rollouts.command("shadow")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollouts_shadow(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    """Champion vs challenger of shadow rollout ROLLOUT_ID: agreement, latency (p50 ms, active and
    candidate), confidence and drift, in all and per model version pair and device group, then the
    promotion gate.

    \b
    Examples:
      edgefleet fleet rollouts shadow 7
      edgefleet fleet rollouts shadow 7 --json
    """
    view = _client(ctx).get(f"/rollouts/{rollout_id}/shadow", ShadowOut)
    if as_json:
        return print_json(view)
    head = ["scope", "devices", "frames", "agreement", "active ms", "candidate ms", "ratio", "conf act", "conf cand"]
    rows = [_shadow_row(f"all ({view.candidate.name} {view.candidate.version})", view.total)]
    for g in view.groups:
        rows.append(_shadow_row(f"{g.group or '-'}: {g.active.version} -> {g.candidate.version}", g.stats))
    table([*head, "drift"], rows)
    verdict = "passes" if view.verdict.passed else "does not pass"
    click.echo(f"rollout {view.rollout} ({view.state}) {verdict} its promotion gate:")
    for check in view.verdict.checks:
        click.echo(f"  {'ok  ' if check.ok else 'FAIL'} {check.detail}")
    if view.promoted_to is not None:
        click.echo(f"promoted: staged rollout {view.promoted_to}")


@rollouts.command("promote")
@click.argument("rollout_id", type=int)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON rollout plan for the staged rollout (default: the shadow rollout's plan, mode install).",
)
@click.option("--reason", default="", help="Why, for the audit trail.")
@json_option
@click.pass_context
def rollouts_promote(ctx: click.Context, rollout_id: int, plan_file: Path | None, reason: str, as_json: bool) -> None:
    """Promote the candidate of shadow rollout ROLLOUT_ID if it passes its promotion gate (operator
    scope): its cameras remove the shadow model and a staged rollout of the candidate starts. A
    failed gate names each failed condition with its number.

    \b
    Examples:
      edgefleet fleet rollouts promote 7
      edgefleet fleet rollouts promote 7 --plan staged.json --reason "agreement 0.97 over 5000 frames"
    """
    body = {"plan": json.loads(plan_file.read_text()) if plan_file else None, "reason": reason}
    row = _client(ctx).post(f"/rollouts/{rollout_id}/promote", RolloutOut, body)
    print_json(row) if as_json else _rollouts_table([row])


from edgefleet.fleet.drift_cli import drift_command  # noqa: E402  (`edgefleet fleet drift`, docs/drift.md)

fleet.add_command(drift_command)

from edgefleet.fleet.alerts_cli import alerts  # noqa: E402  (`edgefleet fleet alerts`, docs/fleet.md)

fleet.add_command(alerts)

from edgefleet.fleet.homeassistant_cli import homeassistant  # noqa: E402  (docs/fleet.md, "Home Assistant")

fleet.add_command(homeassistant)
