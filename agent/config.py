"""The agent's config file (TOML, `version = 1`): strict, typed, no inline secrets.

Unknown keys are refused at every level. Secrets (the TLS private key, an HTTP camera's
password) are never values in this file: the file names a path (`*_file`) or an
environment variable (`*_env`) that holds them. See docs/agent.md for the full format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the same parser, from PyPI
    import tomli as tomllib

from edgefleet.errors import BadInputError, UsageError
from edgefleet.logs import LogFormat
from edgefleet.signing import PublicKey, default_trusted_keys, load_public_key
from edgefleet.strict import Strict, first_error

CONFIG_VERSION = 1
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Secret(Strict):
    """Where a secret lives: exactly one of a file path or an environment variable name."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Secret:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env`")
        return self

    def read(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UsageError(
                    f"environment variable {self.env} (named in the agent config) is not set",
                    f"export {self.env} before starting the agent",
                )
            return value
        try:
            return Path(self.file).read_text().strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read secret file {self.file}: {exc.strerror}", "check the path and its permissions"
            ) from None


class TlsConfig(Strict):
    ca_file: Path
    cert_file: Path
    key_file: Path


class MqttConfig(Strict):
    host: str
    port: int = Field(8883, ge=1, le=65535)
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    transport: Literal["paho", "awsiot"] = "paho"
    tls: TlsConfig
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # How many outbox messages may wait for their PUBACK at once; order is kept regardless.
    inflight: int = Field(20, ge=1, le=1000)


class FleetConfig(Strict):
    url: str | None = None
    ca_file: Path | None = None  # verifies the fleet's HTTPS certificate; default: the system's CAs


class SnapshotsConfig(Strict):
    """[snapshots]: each alert's frame as a JPEG uploaded to the fleet over HTTPS (needs fleet.url).

    The alert names the JPEG's sha256; the upload waits in the outbox until the fleet accepts it."""

    enabled: bool = False
    max_side: int = Field(640, ge=64, le=4096)
    quality: int = Field(80, ge=10, le=95)  # lowered step by step when the JPEG is over max_bytes
    max_bytes: int = Field(200_000, ge=8_192, le=1024 * 1024)
    max_pending_bytes: int = Field(20 * 1024 * 1024, ge=1024 * 1024)  # past this, the oldest waiting go first
    timeout_s: float = Field(20.0, gt=0)


class FolderSource(Strict):
    """Images dropped into a folder, taken in name order; each is deleted once handled."""

    type: Literal["folder"]
    name: str = "folder"
    path: Path
    pattern: str = "*"
    max_fps: float = Field(10.0, gt=0)
    poll_s: float = Field(0.2, gt=0)
    delete_after: bool = True


class HttpSource(Strict):
    """An HTTP(S) snapshot URL, fetched at up to `max_fps`."""

    type: Literal["http"]
    name: str = "http"
    url: str = Field(pattern=r"^https?://")
    max_fps: float = Field(1.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None


class FfmpegSource(Strict):
    """RTSP, V4L2 (/dev/video0) or anything else ffmpeg opens, sampled at `max_fps`."""

    type: Literal["ffmpeg"]
    name: str = "ffmpeg"
    url: str
    input_format: str | None = None  # ffmpeg -f, e.g. "v4l2" or "lavfi"
    max_fps: float = Field(2.0, gt=0)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"


Source = Annotated[FolderSource | HttpSource | FfmpegSource, Field(discriminator="type")]


class DetectionOverrides(Strict):
    """[model.detection]: replaces the package's detection thresholds on this camera."""

    score_threshold: float | None = Field(None, ge=0, le=1)
    iou_threshold: float | None = Field(None, gt=0, le=1)
    max_detections: int | None = Field(None, ge=1, le=1000)


class ModelConfig(Strict):
    """A signed package (the normal case), or a plain .tflite with its own preprocessing."""

    package: Path | None = None
    tflite: Path | None = None
    labels_file: Path | None = None
    task: Literal["classification", "detection"] = "classification"
    resize: tuple[int, int] | None = None
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NHWC"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    trusted_keys: list[Path] = Field(default_factory=list)
    detection: DetectionOverrides = DetectionOverrides()

    @model_validator(mode="after")
    def _not_both(self) -> ModelConfig:
        if self.package is not None and self.tflite is not None:
            raise ValueError("give `package` or `tflite`, not both")
        return self


class LabelFilter(Strict):
    """[rules.filters.<label>]: what a box of that label needs to count (detection models)."""

    min_score: float | None = Field(None, ge=0, le=1)  # default: rules.min_score
    min_area: float | None = Field(None, ge=0)  # frame pixels; default: rules.min_area


class Zone(Strict):
    """[rules.zones.<name>]: a polygon in frame pixels; a box is in it when its bottom centre is.

    The bottom centre is where an object stands, so a person walking past a zone's edge does
    not count because their head overlaps it (Frigate does the same).
    """

    coordinates: list[tuple[float, float]] = Field(min_length=3)
    labels: list[str] = Field(default_factory=list)  # empty: every label of interest


class RulesConfig(Strict):
    labels: list[str] = Field(min_length=1)
    min_score: float = Field(0.5, ge=0, le=1)
    min_area: float = Field(0.0, ge=0)  # frame pixels, detection models
    min_consecutive: int = Field(1, ge=1)
    cooldown_s: float = Field(0.0, ge=0)
    filters: dict[str, LabelFilter] = Field(default_factory=dict)
    zones: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], Zone] = Field(default_factory=dict)
    thumbnail: bool = False
    thumbnail_max_side: int = Field(160, ge=16, le=1024)
    thumbnail_max_bytes: int = Field(16_384, ge=1024, le=65_536)
    draw_boxes: bool = False  # draw the alert's boxes on the thumbnail

    @model_validator(mode="after")
    def _known_labels(self) -> RulesConfig:
        named = [(f"filters.{k}", k) for k in self.filters]
        named += [(f"zones.{z}.labels", label) for z, zone in self.zones.items() for label in zone.labels]
        for where, label in named:
            if label not in self.labels:
                raise ValueError(f"{where}: label {label!r} is not in rules.labels {self.labels}")
        return self


class OutboxConfig(Strict):
    max_messages: int = Field(10_000, ge=10)
    max_bytes: int = Field(50 * 1024 * 1024, ge=64 * 1024)


class TelemetryConfig(Strict):
    interval_s: float = Field(60.0, gt=0)


class HealthConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class RuntimeConfig(Strict):
    """[runtime]: the camera runtime's thread pool. Defaults from measurements on two shared
    cores (docs/performance.md, "Threads"): on TVM's pool a second thread made small models up to
    15.7x slower with one core busy, and spinning workers 7.6-9.3x; on edgefleet's pool two threads
    were 0.63-1.04x one there and 0.56-0.99x on free cores, but up to 1.07x beside low-priority
    work, so one thread stays the default. Set `threads` higher after `edgefleet bench --threads N` shows a gain on the camera.
    With more than one, each model chooses by its runs' times whether idle workers spin through a
    run (docs/runtime.md, "Thread pool"); `spin` is about the time between runs."""

    threads: int = Field(1, ge=1, le=256)
    spin: bool = False  # True: idle workers spin before they sleep (TVM's pool: 300000 yields)
    # Which pool runs parallel kernels: edgefleet's (the caller takes a late worker's tasks;
    # agent/native/edgefleet_pool.h) or TVM's (static split; kept for A/B and as a fallback).
    pool: Literal["edgefleet", "tvm"] = "edgefleet"
    # A package's library to load instead of the best this CPU runs: an ISA level ("x86-64-v3") or a
    # member name (agent/variants.py; EDGEFLEET_LIBRARY overrides it).
    library: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LogConfig(Strict):
    """[log]: how `agent run` writes its log to stderr (journald keeps it); `--log-format` overrides."""

    format: LogFormat = "text"  # "json": one object per line (edgefleet/logs.py)


class AgentConfig(Strict):
    version: Literal[1]
    state_dir: Path
    mqtt: MqttConfig
    fleet: FleetConfig = FleetConfig()
    model: ModelConfig = ModelConfig()
    sources: list[Source] = Field(min_length=1)
    rules: RulesConfig
    outbox: OutboxConfig = OutboxConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    health: HealthConfig = HealthConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    log: LogConfig = LogConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()

    @model_validator(mode="after")
    def _snapshots_need_the_fleet(self) -> AgentConfig:
        if self.snapshots.enabled and not self.fleet.url:
            raise ValueError("snapshots.enabled needs fleet.url (where the snapshots are uploaded)")
        return self

    @property
    def device_id(self) -> str:
        return self.mqtt.device_id


def trusted_keys(cfg: AgentConfig) -> list[PublicKey]:
    """The keys the agent trusts for packages and agent releases: the config's, else the local defaults."""
    return [load_public_key(p) for p in cfg.model.trusted_keys] if cfg.model.trusted_keys else default_trusted_keys()


def parse_config(raw: dict, where: str = "agent config") -> AgentConfig:
    if isinstance(raw, dict) and "version" in raw and raw["version"] != CONFIG_VERSION:
        raise BadInputError(
            f"{where} has version {raw['version']!r}; this agent reads version {CONFIG_VERSION}",
            "upgrade the agent or rewrite the config",
        )
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        first = first_error(exc)
        extra = f" (and {first.more} more)" if first.more else ""
        raise BadInputError(
            f"{where}: {first.where}: {first.msg}{extra}", "fix that key; see docs/agent.md for the format"
        ) from None


def load_config(path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(
            f"cannot read agent config {path}: {exc.strerror}", "create it with `edgefleet agent install`"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path} is not valid TOML: {exc}", "fix the syntax") from None
    return parse_config(raw, str(path))
