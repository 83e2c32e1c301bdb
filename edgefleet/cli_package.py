"""`edgefleet keys`, `inspect` and `run`: working with signed model packages."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.cli import console, print_json, table, trusted_keys_option


@click.group()
def keys() -> None:
    """Signing keys for model packages."""


@keys.command("create")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Private key path (default ~/.edgefleet/keys/signing.key, or $EDGEFLEET_SIGNING_KEY).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing key (packages it signed stop verifying).")
def keys_create(out: Path | None, overwrite: bool) -> None:
    """Create an ed25519 signing key (and KEY.pub beside it) for signing packages and releases.

    \b
    Examples:
      edgefleet keys create
      edgefleet keys create --out /etc/edgefleet/fleet.key
    """
    from edgefleet.signing import create_signing_key, public_path

    key = create_signing_key(out, overwrite=overwrite)
    console.print(f"signing key {key.key_id} written to {key.path} (public key {public_path(key.path)})")


@click.command("inspect")
@click.argument("package", type=click.Path(path_type=Path))
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trusted public key (repeatable; default: ~/.edgefleet/trusted/*.pub and the local key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and checks as JSON.")
def inspect_command(package: Path, trust: tuple[Path, ...], as_json: bool) -> None:
    """Print PACKAGE's manifest and check its file hashes and signature.

    Exits non-zero when the signature or a file hash does not check out, after printing the
    manifest as the package states it.

    \b
    Examples:
      edgefleet inspect scenes-2-rasp4b.tar.gz
      edgefleet inspect scenes-2-rasp4b.tar.gz --trust fleet.pub --json
    """
    from edgefleet.package import inspect_package

    report = inspect_package(package, trusted_keys_option(trust))
    m = report.manifest
    if as_json:
        error = None if report.error is None else {"cause": report.error.cause, "fix": report.error.fix}
        print_json(
            {"manifest": m.model_dump(mode="json"), "valid": report.valid, "signer": report.signer, "error": error}
        )
    else:
        table(
            ["field", "value"],
            [
                ["format", m.format_version],
                ["name", m.name],
                ["version", m.version],
                ["target", f"{m.target.name} ({m.target.arch}, {m.target.device})"],
                ["tvm target", m.target.tvm_target],
                ["runtime", f"{m.runtime.kind} {m.runtime.tvm_version or ''}"],
                ["inputs", "; ".join(f"{t.name} {t.shape} {t.dtype}" for t in m.inputs)],
                ["outputs", "; ".join(f"{t.name} {t.shape} {t.dtype}" for t in m.outputs)],
                ["preprocessing", m.preprocessing.model_dump()],
                ["task", m.task if m.detection is None else f"{m.task}, head {m.detection.head}"],
                ["labels", len(m.labels)],
                ["source", f"{m.provenance.source_uri} sha256 {m.provenance.source_sha256[:16]}"],
                ["training job", m.provenance.training_job or "-"],
                [
                    "verification",
                    f"{m.verification.status} vs {m.verification.reference}: max abs {m.verification.max_abs_diff}, rel {m.verification.max_rel_diff}"
                    if m.verification.status != "skipped"
                    else f"skipped: {m.verification.reason}",
                ],
                ["files", "; ".join(f"{n} {e.size} B" for n, e in m.files.items())],
                ["signed by", m.signature.key_id],
            ],
            title=f"{package}",
        )
        if report.valid:
            console.print(f"[green]signature valid[/green] (key {report.signer}); all file hashes match")
    if report.error is not None:
        raise report.error
