"""An arm64 or armhf container image of the agent, made from the sysroot with the docker SDK (no registry needed).

The image is written in `docker save` format (manifest.json, an OCI image config with
architecture arm64, one layer tar) and handed to `docker load`. That is `docker import` with the
architecture right: Debian's dockerd 20.10 ignores the platform on import and labels the tree
amd64, and a `FROM scratch` build copies the whole tree once per instruction on the vfs storage
driver. No registry is involved. The single layer holds: the Debian tree, the agent's wheels in /opt/edgefleet/site, the
camera runtime bundle in /opt/edgefleet/runtime and this checkout's `edgefleet` core and agent code in /opt/edgefleet/src. Its entrypoint is
`python3 -m edgefleet.cli` and its default command `agent run --config /etc/edgefleet/agent.toml`,
so `docker run -v CONF:/etc/edgefleet IMAGE` starts the agent. On an x86 host it runs where
binfmt_misc has qemu-aarch64 registered, or with QEMU as the entrypoint (see docs/cross.md).

The fleet's image (`role="fleet"`, amd64) is made the same way from an amd64 Debian tree with the
fleet's wheels and this checkout's core and fleet code, without a runtime; its default command is
`fleet serve --config /etc/edgefleet/fleet.toml` and its state lives in /var/lib/edgefleet-fleet.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent_release import device_sources, package_sources
from edgefleet.cross.emulate import require_sysroot
from edgefleet.cross.sysroot import Role, arch_info, build_sysroot
from edgefleet.errors import MissingToolError, ServiceError
from edgefleet.package import now_utc, sha256_file
from edgefleet.runtime_bundle import BUNDLE_ENV, find_bundle

SITE = "/opt/edgefleet/site"
SRC = "/opt/edgefleet/src"
RUNTIME = "/opt/edgefleet/runtime"
FLEET_STATE = "/var/lib/edgefleet-fleet"
FLEET_PACKAGES = ("edgefleet", "edgefleet.contracts", "edgefleet.fleet")
_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"PYTHONPATH={SITE}:{SRC}",
    "PYTHONNOUSERSITE=1",
    "PYTHONUNBUFFERED=1",
]
CONFIGS: dict[str, dict] = {
    "agent": {
        "Env": [*_ENV, f"{BUNDLE_ENV}={RUNTIME}"],
        "Entrypoint": ["/usr/bin/python3", "-m", "edgefleet.cli"],
        "Cmd": ["agent", "run", "--config", "/etc/edgefleet/agent.toml"],
        "WorkingDir": "/",
    },
    "fleet": {
        # EDGEFLEET_HOME: a config that leaves data_dir and signing_key out keeps them in the volume.
        "Env": [*_ENV, f"EDGEFLEET_HOME={FLEET_STATE}"],
        "Entrypoint": ["/usr/bin/python3", "-m", "edgefleet.cli"],
        "Cmd": ["fleet", "serve", "--config", "/etc/edgefleet/fleet.toml"],
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {FLEET_STATE: {}},
        "WorkingDir": "/",
    },
}


# Debian architecture -> docker's (architecture, variant).
DOCKER_PLATFORMS = {"arm64": ("arm64", None), "armhf": ("arm", "v7"), "amd64": ("amd64", None)}


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    architecture: str
    size_bytes: int


# What of the Debian tree the agent never reads, so the image leaves it out. Patterns are fnmatch'ed
# against the path inside the image (a folder's pattern drops it and everything under it).
TRIM = (
    "usr/share/doc/*/*",  # docs (each package's copyright is kept: the licences travel with the binaries)
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/locale/*",  # message translations; the agent logs in English
    "usr/lib/locale/*",
    # apt's indexes and logs: nothing is installed in the image
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    # ... nor configured: apt and dpkg themselves, and the TLS stack only apt's https method links
    # (gnutls and what it alone needs; a scan of every ELF file's DT_NEEDED finds no other user).
    "usr/bin/apt*",
    "usr/lib/apt",
    "usr/lib/*-linux-gnu*/libapt-*",
    "usr/bin/dpkg*",
    "usr/lib/*-linux-gnu*/libgnutls*",
    "usr/lib/*-linux-gnu*/libp11-kit*",
    "usr/lib/*-linux-gnu*/libidn2*",
    "usr/lib/*-linux-gnu*/libunistring*",
    "usr/lib/*-linux-gnu*/libtasn1*",
    "usr/lib/*-linux-gnu*/libnettle*",
    "usr/lib/*-linux-gnu*/libhogweed*",
    "usr/lib/*-linux-gnu*/security",  # PAM's modules: nobody logs in to the agent's container
    # Debian's python3-numpy ships a second copy of its extensions here; python3.11 imports the
    # package from /usr/lib/python3/dist-packages, earlier on sys.path, and never reads this one.
    "usr/lib/python3.11/dist-packages/numpy",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/test",  # help() texts; CPython's test support
    # perl: only debconf and apt's maintainer scripts use it, and no package is configured in the image.
    "usr/bin/perl*",
    "usr/share/perl",
    "usr/share/perl5",
    "usr/lib/*-linux-gnu*/perl",
    "usr/lib/*-linux-gnu*/perl-base",
    "usr/lib/*-linux-gnu*/perl5",
    "usr/lib/*-linux-gnu*/libperl.so*",
    "usr/lib/*-linux-gnu*/gconv",  # iconv charsets: Python has its own codecs
    "opt/edgefleet/site/*/tests",  # the wheels' test suites (numpy's alone is ~10 MB)
    "usr/lib/python3/dist-packages/*/tests",  # and Debian's (numpy's: 7.6 MB)
    "debootstrap",
    # The sysroot's precompiled .pyc (made so each QEMU start skips compiling): a container writes
    # its own on first start, in its writable layer, costing that start ~1-3 s on a Pi.
    "*/__pycache__",
)


def _trimmed(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TRIM) and not name.endswith("/copyright")


def _trim(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if _trimmed(info.name.removeprefix("./")) else info


# Debian bookworm merges /usr: /bin, /sbin and /lib are links into /usr. A sysroot unpacked with
# `dpkg -x` holds them as folders, each a second copy of what /usr has (~24 MB on arm64).
MERGED = ("bin", "sbin", "lib")


def _merged_usr(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """The Debian tree's tar filter: `_trim`, with /bin, /sbin and /lib written as links into /usr."""
    top, _, rest = info.name.removeprefix("./").partition("/")
    if top not in MERGED:
        return _trim(info)
    if not rest:  # the folder itself becomes the link (tarfile does not descend into a link)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, f"usr/{top}", 0o777
        return info
    return None  # its contents: the copy in /usr, or `_outside_usr` adds what only this copy has


def _outside_usr(root: Path, folder: Path | None = None):
    """(path, name in the image) of the topmost entries /bin, /sbin and /lib hold that /usr lacks, moved under /usr."""
    folders = [root / top for top in MERGED] if folder is None else [folder]
    for here in folders:
        if here.is_symlink() or not here.is_dir():
            continue
        for path in sorted(here.iterdir()):
            name = f"usr/{path.relative_to(root)}"
            if _trimmed(name):
                continue
            if not (root / name).exists() and not (root / name).is_symlink():
                yield path, name  # added whole: a folder with what is under it
            elif path.is_dir() and not path.is_symlink():
                yield from _outside_usr(root, path)


def _write_layer(sysroot, out: Path, role: Role = "agent") -> str:
    """Write the image's one layer to `out`; return its sha256 (the layer's diff id)."""
    with tarfile.open(out, "w") as tar:
        tar.add(sysroot.root, arcname=".", filter=_merged_usr)
        for path, name in _outside_usr(sysroot.root):
            tar.add(path, arcname=name, filter=_trim)
        tar.add(sysroot.site, arcname=SITE.lstrip("/"), filter=_trim)
        if role == "agent":
            tar.add(find_bundle(sysroot.arch.target_arch).path, arcname=RUNTIME.lstrip("/"), filter=_no_logs)
        for path, name in device_sources() if role == "agent" else package_sources(FLEET_PACKAGES):
            tar.add(path, arcname=f"{SRC.lstrip('/')}/{name}")
    return sha256_file(out)


def _no_logs(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "/logs" in info.name else info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    entry = tarfile.TarInfo(name)
    entry.size = len(data)
    tar.addfile(entry, io.BytesIO(data))


def write_image_archive(sysroot, arch: str, tag: str, out: Path, role: Role = "agent") -> None:
    """A `docker save`-format archive of the `role` image for linux/`arch`, loadable by `docker load`."""
    layer = out.with_name("layer.tar")
    diff_id = _write_layer(sysroot, layer, role)
    architecture, variant = DOCKER_PLATFORMS[arch]
    config = json.dumps(
        {
            "architecture": architecture,
            **({"variant": variant} if variant else {}),
            "os": "linux",
            "created": now_utc(),
            "config": CONFIGS[role],
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [
                {
                    "created": now_utc(),
                    "created_by": f"edgefleet cross image --role {role} ({sysroot.info.spec.arch} sysroot {sysroot.info.key})",
                }
            ],
        },
        sort_keys=True,
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        _add_bytes(tar, config_name, config)
        _add_bytes(tar, "manifest.json", manifest)
        tar.add(layer, arcname=f"{diff_id}/layer.tar")
    layer.unlink()


def _client():
    try:
        import docker
    except ImportError:
        raise MissingToolError("the docker SDK is not installed", "pip install 'edgefleet[cross]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests and socket errors alike
        raise ServiceError(
            f"no docker daemon answers ({str(exc).splitlines()[0][:200]})",
            "start dockerd (apt-get install docker.io) or set DOCKER_HOST",
        ) from None
    return client


def build_image(arch: str = "arm64", tag: str | None = None, role: Role = "agent", quiet: bool = False) -> ImageResult:
    """Load an image into docker as `tag` (default edgefleet-ROLE:ARCH): the `arch` sysroot plus the
    agent and its runtime, or (`role="fleet"`, amd64) the fleet's tree and code, built here if needed."""
    info = arch_info(arch, role)
    tag = tag or f"edgefleet-{role}:{info.debian}"
    client = _client()
    sysroot = require_sysroot(info.debian) if role == "agent" else build_sysroot(arch, role=role, quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="edgefleet-image-") as tmp:
        archive = Path(tmp) / "image.tar"
        write_image_archive(sysroot, info.debian, tag, archive, role)
        try:
            with open(archive, "rb") as fh:
                client.images.load(fh)
            image = client.images.get(tag)
        except Exception as exc:  # docker.errors.APIError / ImageNotFound
            raise ServiceError(
                f"loading image {tag} into docker failed: {str(exc).splitlines()[0][:300]}",
                "check the docker daemon's log and its free disk space",
            ) from None
    return ImageResult(tag, image.id, image.attrs.get("Architecture", ""), int(image.attrs.get("Size", 0)))
