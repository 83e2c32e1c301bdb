"""`edgefleet agent install | run | check-config`: thin wrappers over install_agent and run_agent."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefleet.cli import console, print_json, table, trusted_keys_option
from edgefleet.logs import LOG_FORMATS, setup_logging

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


@click.group()
def agent() -> None:
    """The camera agent: local inference, alerts over MQTT."""


@agent.command("install")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Config file to write.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/edgefleet"),
    show_default=True,
    help="Where the agent keeps its identity, packages, outbox and update journal.",
)
@click.option("--device-id", required=True, help="This camera's id (the CN of its certificate, its MQTT topics).")
@click.option("--mqtt-host", help="Broker host (default: what enrollment says).")
@click.option("--mqtt-port", type=int, help="Broker port (default: what enrollment says, else 8883).")
@click.option(
    "--transport",
    type=click.Choice(["paho", "awsiot"]),
    default="paho",
    show_default=True,
    help="MQTT client: paho (any broker) or awsiot (AWS IoT Core, needs the awsiot extra).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificate of the broker (default: what enrollment says).",
)
@click.option(
    "--cert",
    "cert_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Device certificate issued by hand.",
)
@click.option(
    "--enroll-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding a one-time enrollment token (or set EDGEFLEET_ENROLL_TOKEN): enroll at --fleet-url for the certificate.",
)
@click.option(
    "--fleet-ca",
    "fleet_ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA of the fleet's HTTPS certificate, if private (`fleet server-cert` ca.pem): used to enroll, and kept as [fleet] ca_file.",
)
@click.option("--package", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Initial model package.")
@click.option("--label", "labels", multiple=True, required=True, help="Label to alert on (repeatable).")
@click.option("--fleet-url", help="Fleet HTTP API, for package downloads.")
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Package signing public key the device accepts (repeatable).",
)
@click.option("--user", default="edgefleet", show_default=True, help="Unprivileged account the service runs as.")
@click.option(
    "--unit-path",
    type=click.Path(path_type=Path),
    default=Path("/etc/systemd/system/edgefleet-agent.service"),
    show_default=True,
    help="systemd unit to write.",
)
@click.option("--force", is_flag=True, help="Rewrite an existing config (the device key is kept).")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
def install_command(
    config_path,
    state_dir,
    device_id,
    mqtt_host,
    mqtt_port,
    transport,
    ca_file,
    cert_file,
    enroll_token_file,
    fleet_ca_file,
    package,
    labels,
    fleet_url,
    trust,
    user,
    unit_path,
    force,
    dry_run,
) -> None:
    """Prepare this camera: config, device key and CSR (enrolled at the fleet with a token), state folders, systemd unit.

    \b
    Examples:
      edgefleet agent install --device-id cam-7 --label person --fleet-url https://fleet.example:8080 \\
          --enroll-token-file cam-7.token --dry-run
      edgefleet agent install --device-id cam-7 --label person --label car --package scenes-1-rasp4b.tar.gz \\
          --mqtt-host broker.example --ca ca.pem --cert cam-7.pem
    """
    import os

    from edgefleet.agent.install import InstallOptions, install_agent

    # The token is a secret: from a file or the environment, never a flag value.
    token = (
        enroll_token_file.read_text().strip() if enroll_token_file else os.environ.get("EDGEFLEET_ENROLL_TOKEN") or None
    )
    plan = install_agent(
        InstallOptions(
            config_path=config_path,
            state_dir=state_dir,
            device_id=device_id,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            transport=transport,
            ca_file=ca_file,
            cert_file=cert_file,
            enroll_token=token,
            fleet_ca_file=fleet_ca_file,
            package=package,
            labels=tuple(labels),
            fleet_url=fleet_url,
            trust=tuple(trust),
            user=user,
            unit_path=unit_path,
            force=force,
            dry_run=dry_run,
        )
    )
    verb = "would create" if dry_run else "created"
    for directory in plan.directories:
        console.print(f"{verb} directory {directory}")
    for path, content in plan.files.items():
        console.print(f"{verb} {path}")
        if dry_run and not path.name.endswith((".key", ".pem", ".csr")):
            click.echo(content)
    for note in plan.notes:
        console.print(f"note: {note}")


@agent.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Agent config (TOML, docs/agent.md).",
)
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames.")
@click.option("--idle-exit", type=float, help="Stop when no frame arrived for this many seconds.")
@click.option(
    "--drain",
    type=float,
    default=5.0,
    show_default=True,
    help="On stop, seconds to wait for the broker to ack stored messages.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log records written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="Log lines as plain text or one JSON object per line [default: the config's log.format, else text].",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary when stopped.")
def run_command(config_path, max_frames, idle_exit, drain, log_level, log_format, as_json) -> None:
    """Run the agent until SIGTERM/SIGINT.

    \b
    Examples:
      edgefleet agent run                                  # /etc/edgefleet/agent.toml
      edgefleet agent run --config agent.toml --log-format json
      edgefleet agent run --config agent.toml --max-frames 100 --json
    """
    from edgefleet.agent.config import load_config
    from edgefleet.agent.run import RunOptions, run_agent

    config = load_config(config_path)
    setup_logging(log_level, log_format or config.log.format)
    summary = run_agent(config, RunOptions(max_frames=max_frames, idle_exit_s=idle_exit, drain_s=drain))
    if as_json:
        print_json(
            {"frames": summary.frames, "alerts": summary.alerts, "outbox": summary.outbox, "restart": summary.restart}
        )
    else:
        console.print(
            f"stopped: frames {json.dumps(summary.frames)}, alerts {summary.alerts}, outbox {json.dumps(summary.outbox)}"
        )
    if summary.restart:
        from edgefleet.agent.self_update import RESTART_EXIT_CODE

        console.print("restarting: an agent update switched releases (the launcher starts the agent again)")
        raise SystemExit(RESTART_EXIT_CODE)


@agent.command("launch", context_settings={"ignore_unknown_options": True})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Agent config (TOML, docs/agent.md).",
)
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def launch_command(config_path, run_args) -> None:
    """Start the agent release in use (what the systemd unit runs): roll back a release that failed to
    prove itself, then replace this process with `agent run` on it. RUN_ARGS go to `agent run`.

    \b
    Examples:
      edgefleet agent launch --config /etc/edgefleet/agent.toml
      edgefleet agent launch --config agent.toml --log-format json
    """
    from edgefleet.agent.config import load_config
    from edgefleet.agent.launcher import launch

    config = load_config(config_path)
    setup_logging("info", config.log.format)
    launch(config_path, Path(config.state_dir), list(run_args))


@agent.group("release")
def release() -> None:
    """Agent releases: the agent's code and runtime as one signed archive the fleet rolls out."""


@release.command("build")
@click.option(
    "--version",
    "version",
    help="Release version, dotted integers newer than the cameras' (default: this checkout's edgefleet version).",
)
@click.option(
    "--arch", help="Camera architecture: x86_64, aarch64 or armv7 (default: the runtime bundle's, else this machine's)."
)
@click.option(
    "--runtime",
    "runtime_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Runtime bundle folder to ship (default: the built bundle of --arch, see `edgefleet runtime build`).",
)
@click.option("--no-runtime", is_flag=True, help="Ship code only: cameras keep the runtime they have.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signing key (default: ~/.edgefleet/signing.key).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Archive to write (default: edgefleet-agent-VERSION-ARCH.tar.gz).",
)
def release_build_command(version, arch, runtime_dir, no_runtime, key_path, output) -> None:
    """Build and sign an agent release of this checkout's camera code (and runtime bundle).

    Upload it with `edgefleet fleet agent-releases upload`.

    \b
    Examples:
      edgefleet agent release build --arch aarch64
      edgefleet agent release build --version 0.3.1 --arch armv7 --no-runtime -o agent-0.3.1-armv7.tar.gz
    """
    from edgefleet import __version__
    from edgefleet.agent_release import build_release
    from edgefleet.runtime_bundle import canonical_arch, find_bundle, host_arch, read_bundle
    from edgefleet.signing import load_signing_key

    version = version or __version__
    bundle = (
        None
        if no_runtime
        else read_bundle(runtime_dir)
        if runtime_dir
        else find_bundle(canonical_arch(arch) if arch else None)
    )
    arch = canonical_arch(arch or (bundle.info.arch if bundle else host_arch()))
    output = output or Path(f"edgefleet-agent-{version}-{arch}.tar.gz")
    manifest = build_release(output, version, load_signing_key(key_path), arch=arch, bundle=bundle)
    console.print(
        f"built {output}: agent {manifest.version} for {manifest.arch}, {len(manifest.files)} files, "
        f"{'runtime ' + manifest.runtime.key if manifest.runtime else 'no runtime'}, signed by {manifest.signature.key_id}"
    )


@agent.command("check-config")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
def check_config_command(config_path) -> None:
    """Validate the agent config file CONFIG and print it as JSON with defaults filled in.

    \b
    Examples:
      edgefleet agent check-config /etc/edgefleet/agent.toml
    """
    from edgefleet.agent.config import load_config

    print_json(load_config(config_path).model_dump(mode="json"))


# `edgefleet run`: a top-level command (edgefleet/cli.py) that runs a package the way a camera does.
@click.command("run")
@click.argument("package", type=click.Path(path_type=Path))
@click.option(
    "--image", required=True, type=click.Path(path_type=Path), help="Image file to classify, or to detect objects in."
)
@click.option(
    "--top-k",
    "k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="How many classes to print (classifiers).",
)
@click.option(
    "--repeat", type=click.IntRange(min=1), default=5, show_default=True, help="Runs to time; the median is printed."
)
@click.option(
    "--trust", multiple=True, type=click.Path(exists=True, path_type=Path), help="Trusted public key (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run_package_command(
    package: Path, image: Path, k: int, repeat: int, trust: tuple[Path, ...], as_json: bool
) -> None:
    """Run PACKAGE on one image here and print the top-k labels (a detector: its boxes, labels
    and scores, after NMS) and the latency.

    \b
    Examples:
      edgefleet run scenes-2-x86_64.tar.gz --image frame.jpg
      edgefleet run detector-1-x86_64.tar.gz --image street.jpg --json
    """
    from edgefleet.agent.infer import run_package_on_image

    result = run_package_on_image(package, image, trusted_keys_option(trust), k=k, repeat=repeat)
    if as_json:
        found = (
            {
                "detections": [
                    {"label": d.label, "score": d.score, "box_px": d.px, "box": d.box} for d in result.detections
                ]
            }
            if result.detections is not None
            else {"predictions": [p.__dict__ for p in result.predictions]}
        )
        print_json({**found, "latency_ms": result.latency_ms, "median_ms": result.median_ms, "library": result.library})
        return
    if result.detections is not None:
        table(
            ["#", "label", "score", "x1", "y1", "x2", "y2"],
            [[i + 1, d.label, f"{d.score:.4f}", *(f"{v:.1f}" for v in d.px)] for i, d in enumerate(result.detections)],
            title=f"{len(result.detections)} detection(s), boxes in image pixels",
        )
    else:
        table(
            ["rank", "label", "index", "score"],
            [[i + 1, p.label, p.index, f"{p.score:.4f}"] for i, p in enumerate(result.predictions)],
        )
    console.print(f"latency: median {result.median_ms:.2f} ms over {len(result.latency_ms)} runs")
    console.print(f"library: {result.library}")
