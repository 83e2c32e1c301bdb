"""`edgefleet cross sysroot | run | infer | image`: thin wrappers over edgefleet.cross."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgefleet.cli import console, print_json

ARCH_CHOICE = click.Choice(["arm64", "armhf"])
# edgefleet.cross.sysroot.SUITES, spelled out so `--help` needs no import of the sysroot code.
SUITE_CHOICE = click.Choice(["bookworm", "trixie"])
SUITE_HELP = "Debian suite: bookworm (Python 3.11) or trixie (3.13)."


@click.group()
def cross() -> None:
    """ARM sysroots, QEMU user-mode emulation and arm64 container images, for testing on x86."""


@cross.command("sysroot")
@click.option("--arch", required=True, type=ARCH_CHOICE, help="arm64 for rasp4b/rasp5/aarch64, armhf for rasp3b/armv7.")
@click.option("--force", is_flag=True, help="Rebuild even when a sysroot for the same inputs is cached.")
@click.option("--mirror", help="Debian mirror (default $EDGEFLEET_DEBIAN_MIRROR or http://deb.debian.org/debian).")
@click.option("--suite", type=SUITE_CHOICE, default="bookworm", show_default=True, help=SUITE_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print sysroot.json.")
def sysroot_command(arch: str, force: bool, mirror: str | None, suite: str, quiet: bool, as_json: bool) -> None:
    """Build (or reuse) the Debian sysroot for --arch (cached by a hash of its inputs).

    \b
    Examples:
      edgefleet cross sysroot --arch arm64
      edgefleet cross sysroot --arch armhf --suite trixie --json
    """
    from edgefleet.cross.sysroot import build_sysroot

    sysroot = build_sysroot(arch, mirror=mirror, force=force, quiet=quiet or as_json, suite=suite)
    if as_json:
        print_json({"path": str(sysroot.path), **sysroot.info.model_dump(mode="json")})
    else:
        console.print(f"sysroot {sysroot.info.spec.arch} {sysroot.info.key} at {sysroot.path}")


@cross.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--target", "-t", required=True, help="ARM target whose sysroot runs the command (rasp4b, rasp3b, aarch64, ...)."
)
@click.option("--timeout", type=float, help="Kill the command after this many seconds.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(target: str, timeout: float | None, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) from TARGET's sysroot under QEMU user mode; exits with its status.

    \b
    Examples:
      edgefleet cross run --target rasp4b -- python3 -c 'import platform; print(platform.machine())'
      edgefleet cross run --target rasp3b --timeout 60 -- uname -m
    """
    import subprocess

    from edgefleet.cross.emulate import run_emulated, sysroot_for_target

    try:
        proc = run_emulated(sysroot_for_target(target), list(command), timeout=timeout)
    except subprocess.TimeoutExpired:
        console.print(f"killed after {timeout} s")
        sys.exit(124)  # as coreutils `timeout` does
    sys.exit(proc.returncode)


@cross.command("infer")
@click.argument("package", type=click.Path(path_type=Path))
@click.option(
    "--image",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Image file to classify.",
)
@click.option("--repeat", default=1, show_default=True, help="Runs to time.")
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trusted public key (repeatable).",
)
def infer_command(package: Path, image: Path, repeat: int, trust: tuple[Path, ...]) -> None:
    """Run an ARM PACKAGE on one image with `edgefleet run` inside its emulated sysroot.

    A package for another architecture is refused before anything starts.

    \b
    Examples:
      edgefleet cross infer scenes-2-rasp4b.tar.gz --image frame.jpg --repeat 3
    """
    from edgefleet.cross.emulate import run_package_emulated

    proc = run_package_emulated(package, image, repeat=repeat, trust=list(trust))
    sys.exit(proc.returncode)


@cross.command("image")
@click.option(
    "--role",
    type=click.Choice(["agent", "fleet"]),
    default="agent",
    show_default=True,
    help="agent: a camera's image from the ARM sysroot; fleet: the fleet service's amd64 image.",
)
@click.option(
    "--arch",
    type=click.Choice(["arm64", "armhf", "amd64"]),
    help="arm64 (rasp4b, rasp5) or armhf (rasp3b) for the agent [default arm64]; amd64 for the fleet.",
)
@click.option("--tag", help="Image tag (default edgefleet-ROLE:ARCH).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines (the fleet's Debian tree is built on first use).")
def image_command(role: str, arch: str | None, tag: str | None, quiet: bool) -> None:
    """Build a container image and load it into docker: the agent and its runtime from the ARCH
    sysroot, or the fleet service from an amd64 Debian tree with its wheels.

    The agent's needs the sysroot (`edgefleet cross sysroot --arch ARCH`) and the runtime
    (`edgefleet runtime build --arch ARCH`); the fleet's builds its own tree (cached) the first time.

    \b
    Examples:
      edgefleet cross image --arch arm64
      edgefleet cross image --arch armhf --tag registry.example/edgefleet-agent:armhf
      edgefleet cross image --role fleet
      docker run -v /etc/edgefleet:/etc/edgefleet:ro -v fleet-data:/var/lib/edgefleet-fleet --network host edgefleet-fleet:amd64
    """
    from edgefleet.cross.image import build_image

    result = build_image(arch or ("arm64" if role == "agent" else "amd64"), tag, role, quiet)
    console.print(
        f"image {result.tag} ({result.architecture}, {result.size_bytes / 1e6:.0f} MB) id {result.image_id[:19]}"
    )


@cross.command("deb")
@click.option("--arch", required=True, type=click.Choice(["amd64", "arm64", "armhf"]), help="Camera architecture.")
@click.option("--suite", type=SUITE_CHOICE, default="bookworm", show_default=True, help=SUITE_HELP)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write the .deb into.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def deb_command(arch: str, suite: str, out_dir: Path, quiet: bool) -> None:
    """Build the camera's Debian package: the agent in a private venv, its runtime, a systemd unit.

    Needs the runtime of that architecture (`edgefleet runtime build --arch ...`).

    \b
    Examples:
      edgefleet cross deb --arch arm64 --out dist/
      edgefleet cross deb --arch armhf --suite trixie
    """
    from edgefleet.cross.debpkg import build_deb

    path = build_deb(arch, suite=suite, out_dir=out_dir, quiet=quiet)
    console.print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
