"""`edgefleet keys`, `inspect` and `run`: working with signed model packages."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.cli import console, print_json, table, trusted_keys_option
from edgefleet.errors import EdgefleetError


@click.group()
def keys() -> None:
    """Signing keys for model packages."""


@keys.command("create")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Private key path (default ~/.edgefleet/keys/signing.key, or $EDGEFLEET_SIGNING_KEY).")
@click.option("--overwrite", is_flag=True, help="Replace an existing key (packages it signed stop verifying).")
def keys_create(out: Path | None, overwrite: bool) -> None:
    """Create an ed25519 signing key (and KEY.pub beside it). Maps to edgefleet.signing.create_signing_key."""
    from edgefleet.signing import create_signing_key, public_path

    key = create_signing_key(out, overwrite=overwrite)
    console.print(f"signing key {key.key_id} written to {key.path} (public key {public_path(key.path)})")


@click.command("inspect")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, path_type=Path), help="Trusted public key (repeatable; default: ~/.edgefleet/trusted/*.pub and the local key).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and checks as JSON.")
def inspect_command(package: Path, trust: tuple[Path, ...], as_json: bool) -> None:
    """Print a package's manifest and check its file hashes and signature."""
    from edgefleet.package import open_package

    with open_package(package, None) as unverified:
        manifest = unverified.manifest
    signature_error: EdgefleetError | None = None
    signer = None
    try:
        with open_package(package, trusted_keys_option(trust)) as opened:
            signer = opened.signer
    except EdgefleetError as exc:
        signature_error = exc
    if as_json:
        print_json({"manifest": manifest.model_dump(mode="json"), "signature": {"valid": signature_error is None, "signer": signer, "error": str(signature_error) if signature_error else None}})
    else:
        m = manifest
        table(["field", "value"], [
            ["name", m.name], ["version", m.version], ["target", f"{m.target.name} ({m.target.arch}, {m.target.device})"],
            ["tvm target", m.target.tvm_target], ["runtime", f"{m.runtime.kind} {m.runtime.tvm_version or ''}"],
            ["inputs", "; ".join(f"{t.name} {t.shape} {t.dtype}" for t in m.inputs)],
            ["outputs", "; ".join(f"{t.name} {t.shape} {t.dtype}" for t in m.outputs)],
            ["preprocessing", m.preprocessing.model_dump()], ["task", m.task], ["labels", len(m.labels)],
            ["source", f"{m.provenance.source_uri} sha256 {m.provenance.source_sha256[:16]}"],
            ["training job", m.provenance.training_job or "-"],
            ["verification", f"{m.verification.status} vs {m.verification.reference}: max abs {m.verification.max_abs_diff}, rel {m.verification.max_rel_diff}" if m.verification.status != "skipped" else f"skipped: {m.verification.reason}"],
            ["files", "; ".join(f"{n} {e.size} B" for n, e in m.files.items())],
        ], title=f"{package}")
        if signature_error is None:
            console.print(f"[green]signature valid[/green] (key {signer}); all file hashes match")
    if signature_error is not None:
        raise signature_error


@click.command("run")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--image", required=True, type=click.Path(path_type=Path), help="Image file to classify.")
@click.option("--top-k", "k", default=5, show_default=True, help="How many classes to print.")
@click.option("--repeat", default=5, show_default=True, help="Runs to time; the median is printed.")
@click.option("--trust", multiple=True, type=click.Path(exists=True, path_type=Path), help="Trusted public key (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def run_command(package: Path, image: Path, k: int, repeat: int, trust: tuple[Path, ...], as_json: bool) -> None:
    """Run a package on one image here and print the top-k labels and latency."""
    from edgefleet.agent.infer import run_package_on_image

    result = run_package_on_image(package, image, trusted_keys_option(trust), k=k, repeat=repeat)
    if as_json:
        print_json({"predictions": [p.__dict__ for p in result.predictions], "latency_ms": result.latency_ms, "median_ms": result.median_ms})
        return
    table(["rank", "label", "index", "score"], [[i + 1, p.label, p.index, f"{p.score:.4f}"] for i, p in enumerate(result.predictions)])
    console.print(f"latency: median {result.median_ms:.2f} ms over {len(result.latency_ms)} runs")
