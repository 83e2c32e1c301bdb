"""`edgefleet runtime build | show`: the camera runtime (TVM's runtime alone) per architecture."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.cli import console, print_json

ARCH_CHOICE = click.Choice(["x86_64", "aarch64", "arm64", "armv7", "armhf"])


@click.group()
def runtime() -> None:
    """The camera runtime: TVM's runtime built from source, without the 480 MB compiler.

    Cameras run every package on it, and `edgefleet compile` verifies packages on it too.
    """


@runtime.command("build")
@click.option(
    "--arch",
    required=True,
    type=ARCH_CHOICE,
    help="x86_64; aarch64 (arm64: rasp4b, rasp5, Jetson CPU); armv7 (armhf: rasp3b).",
)
@click.option(
    "--tvm-source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TVM source release tar.gz (default: $EDGEFLEET_TVM_SOURCE or the project's third_party copy).",
)
@click.option("--force", is_flag=True, help="Rebuild even when a bundle for the same inputs is cached.")
@click.option("--jobs", "-j", type=click.IntRange(1), help="Parallel compile jobs (default: all cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle's runtime.json.")
@click.option("--cuda", "cuda_sms", multiple=True, help="On a Jetson: build with CUDA for this GPU (sm_87, sm_72).")
@click.option(
    "--abi-source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An older agent's agent/native folder: build the runtime its C ABI speaks, for cameras still on it.",
)
def build_command(
    arch: str,
    tvm_source: Path | None,
    force: bool,
    jobs: int | None,
    quiet: bool,
    as_json: bool,
    cuda_sms: tuple[str, ...],
    abi_source: Path | None,
) -> None:
    """Build (or reuse) the runtime for --arch, cached by a hash of every input.

    \b
    Examples:
      edgefleet runtime build --arch armv7
      edgefleet runtime build --arch aarch64 --cuda sm_87 -j 4
      edgefleet runtime build --arch armv7 --abi-source old-agent/edgefleet/agent/native
    """
    from edgefleet.cross.runtime_build import build_runtime

    bundle = build_runtime(
        arch,
        tvm_source=tvm_source,
        force=force,
        quiet=quiet or as_json,
        jobs=jobs,
        cuda_sms=list(cuda_sms),
        abi_source=abi_source,
    )
    _report(bundle, as_json)


@runtime.command("show")
@click.option("--arch", type=ARCH_CHOICE, help="Architecture (default: this machine's).")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle's runtime.json.")
def show_command(arch: str | None, as_json: bool) -> None:
    """Show the runtime this machine's agent would use, after checking its libraries' hashes.

    \b
    Examples:
      edgefleet runtime show
      edgefleet runtime show --arch aarch64 --json
    """
    from edgefleet.runtime_bundle import find_bundle

    _report(find_bundle(arch), as_json)


def _report(bundle, as_json: bool) -> None:
    if as_json:
        print_json({"path": str(bundle.path), **bundle.info.model_dump(mode="json")})
        return
    size = sum((bundle.lib / name).stat().st_size for name in bundle.info.libraries) / 1e6
    console.print(f"runtime {bundle.info.describe()} ({size:.1f} MB, glibc >= {bundle.info.glibc}) at {bundle.path}")
