"""An arm64 container image of the agent, made from the sysroot with the docker SDK (no registry needed).

`FROM scratch` + `ADD rootfs.tar /`, built for platform linux/arm64: `docker import` would be the
same layer, but Debian's dockerd 20.10 ignores the architecture on import and labels the image
amd64. The image is one layer: the Debian tree, the agent's wheels in /opt/edgefleet/site and this
checkout's `edgefleet` core and agent code in /opt/edgefleet/src. Its entrypoint is
`python3 -m edgefleet.cli` and its default command `agent run --config /etc/edgefleet/agent.toml`,
so `docker run -v CONF:/etc/edgefleet IMAGE` starts the agent. On an x86 host it runs where
binfmt_misc has qemu-aarch64 registered, or with QEMU as the entrypoint (see docs/cross.md).
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.cross.emulate import require_sysroot
from edgefleet.cross.sysroot import arch_info
from edgefleet.errors import MissingToolError, ServiceError, TargetNotRunnableError

SITE = "/opt/edgefleet/site"
SRC = "/opt/edgefleet/src"
DOCKERFILE = f"""FROM scratch
ADD rootfs.tar /
ENV PYTHONPATH={SITE}:{SRC} PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1
WORKDIR /
ENTRYPOINT ["/usr/bin/python3", "-m", "edgefleet.cli"]
CMD ["agent", "run", "--config", "/etc/edgefleet/agent.toml"]
"""


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    architecture: str
    size_bytes: int


def _no_pycache(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name.split("/") else info


def _write_rootfs(sysroot, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        tar.add(sysroot.root, arcname=".")
        tar.add(sysroot.site, arcname=SITE.lstrip("/"))
        core = Path(importlib.util.find_spec("edgefleet").submodule_search_locations[0])
        agent = Path(importlib.util.find_spec("edgefleet.agent").submodule_search_locations[0])
        for entry in sorted(core.glob("*.py")):
            tar.add(entry, arcname=f"{SRC.lstrip('/')}/edgefleet/{entry.name}")
        tar.add(agent, arcname=f"{SRC.lstrip('/')}/edgefleet/agent", filter=_no_pycache)


def _client():
    try:
        import docker
    except ImportError:
        raise MissingToolError("the docker SDK is not installed", "pip install 'edgefleet[cross]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests and socket errors alike
        raise ServiceError(f"no docker daemon answers ({str(exc).splitlines()[0][:200]})", "start dockerd (apt-get install docker.io) or set DOCKER_HOST") from None
    return client


def build_image(arch: str = "arm64", tag: str = "edgefleet-agent:arm64") -> ImageResult:
    """Import the `arch` sysroot plus the agent as image `tag` for platform linux/`arch`."""
    info = arch_info(arch)
    if not info.agent_wheels:
        raise TargetNotRunnableError(f"no agent image for {info.debian}: {info.note}", "build the arm64 image")
    sysroot = require_sysroot(info.debian)
    client = _client()
    with tempfile.TemporaryDirectory(prefix="edgefleet-image-") as tmp:
        rootfs, context = Path(tmp) / "rootfs.tar", Path(tmp) / "context.tar"
        _write_rootfs(sysroot, rootfs)
        with tarfile.open(context, "w") as tar:
            dockerfile = DOCKERFILE.encode()
            entry = tarfile.TarInfo("Dockerfile")
            entry.size = len(dockerfile)
            tar.addfile(entry, io.BytesIO(dockerfile))
            tar.add(rootfs, arcname="rootfs.tar")
        rootfs.unlink()
        try:
            with open(context, "rb") as fh:
                image, _ = client.images.build(fileobj=fh, custom_context=True, tag=tag, platform=f"linux/{info.debian}", rm=True, forcerm=True)
        except Exception as exc:  # docker.errors.BuildError / APIError
            raise ServiceError(f"building image {tag} failed: {str(exc).splitlines()[0][:300]}", "check the docker daemon's log and its free disk space") from None
    return ImageResult(tag, image.id, image.attrs.get("Architecture", ""), int(image.attrs.get("Size", 0)))
