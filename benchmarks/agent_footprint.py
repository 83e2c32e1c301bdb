"""The camera agent's footprint, measured in one run: disk per distribution, the agent's memory, image sizes.

1. x86_64: installs this checkout's `agent` role into a fresh venv (`python -m venv`, pip from the
   configured index) and prints site-packages size per distribution (files of its RECORD's top-level
   entries, .pyc included), the total and the total beyond numpy and pillow (target <= 40 MB).
2. aarch64 / armhf: the same count over the arm64 and armhf sysroots' `site/` folders, the wheels a
   camera of that architecture gets (armhf takes numpy and pillow from Debian: not in site/).
3. Runs the real agent (`python -m edgefleet.cli agent run`, from that venv: no compiler, no rich) on
   MobileNetV2 compiled here for x86_64, with a real mosquitto broker and 20 camera frames, and prints
   its peak resident memory (VmHWM, polled; the target's measure, <= 60 MB) and the ratio to the
   target, its RSS and PSS while it handles frames (median of the polls: its steady state), then
   where it goes: RSS after each step of the same imports, load and inferences in a fresh process,
   the load's transient peak, and the end state split anonymous/file-backed (smaps_rollup).
4. With --images: builds `edgefleet cross image --arch arm64|armhf` and prints docker's size (target <= 150 MB).

    .venv/bin/python benchmarks/agent_footprint.py [--images]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Not part of what a camera runs: the venv's own installer.
TOOLING = {"pip", "setuptools", "wheel"}
HEAVY = {"numpy", "pillow"}


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())


def distribution_sizes(site: Path) -> dict[str, int]:
    """Bytes on disk per distribution in a site-packages folder, by the top-level entries its RECORD names."""
    sizes = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = (info / "METADATA").read_text(errors="replace")
        name = re.sub(r"[-_.]+", "-", re.search(r"^Name:\s*(\S+)", meta, re.M).group(1)).lower()
        record = info / "RECORD"
        tops = (
            {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
            if record.is_file()
            else set()
        )
        tops = {t for t in tops if t and t != ".." and not t.endswith(".dist-info")}
        total = _tree_bytes(info)
        for top in tops:
            entry = site / top
            total += _tree_bytes(entry) if entry.exists() else 0
            cache = site / "__pycache__"  # a single-module distribution's .pyc lives here
            if top.endswith(".py") and cache.is_dir():
                total += sum(f.stat().st_size for f in cache.glob(top[:-3] + ".*.pyc"))
        sizes[name] = total
    return sizes


def print_sizes(title: str, sizes: dict[str, int]) -> None:
    counted = {k: v for k, v in sizes.items() if k not in TOOLING}
    print(f"\n{title}")
    for name, size in sorted(counted.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {size / 1e6:7.2f} MB")
    total = sum(counted.values())
    beyond = sum(v for k, v in counted.items() if k not in HEAVY)
    print(
        f"  {'total':<22} {total / 1e6:7.2f} MB; beyond numpy and pillow {beyond / 1e6:.2f} MB (target <= 40)"
        + (f"; not counted: {', '.join(sorted(TOOLING & sizes.keys()))}" if TOOLING & sizes.keys() else "")
    )


def agent_venv(root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{REPO}[agent]",
        ],
        check=True,
    )
    return venv


# Where the agent's memory goes: the same imports, load and run as the agent, in steps. RSS counts
# every resident page of the process, file-backed ones (libraries, the mapped model.so) included:
# that is the target's measure. The load's transient peak (TVM's loader copies the weights) shows
# only in VmHWM; smaps_rollup splits the end state into anonymous and file-backed, RSS and PSS.
BREAKDOWN = r"""
import re, sys
from pathlib import Path
status = lambda key: int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
rss = lambda: status("VmRSS")
steps = [("interpreter", rss())]
import numpy as np
steps.append(("+ numpy", rss()))
import edgefleet.agent.run
steps.append(("+ the agent's other imports", rss()))
from edgefleet.agent.runtime import TvmModel
model = TvmModel(Path(sys.argv[1]))
steps.append(("+ runtime and model loaded", rss()))
load_peak = status("VmHWM")
for _ in range(5):
    model.run([np.zeros((1, 3, 224, 224), np.float32)])
steps.append(("+ 5 inferences", rss()))
for (_, before), (name, after) in zip([("", 0.0)] + steps, steps):
    print(f"  {name:<30} {after - before:6.1f} MB  (RSS {after:.1f})")
print(f"  peak while loading the model   {load_peak:6.1f} MB  (VmHWM: TVM's loader holds one more copy of the weights)")
rollup = open("/proc/self/smaps_rollup").read()
kb = {k: int(v) / 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.M)}
print(f"  end state: RSS {kb['Rss']:.1f} MB (anonymous {kb['Anonymous']:.1f}, file-backed {kb['Rss'] - kb['Anonymous']:.1f}); "
      f"PSS {kb['Pss']:.1f} (anonymous {kb['Pss_Anon']:.1f}, file-backed {kb['Pss_File']:.1f})")
"""


def rss_breakdown(venv: Path, package: Path, root: Path) -> str:
    from edgefleet.package import open_package

    with open_package(package, None) as opened:
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", BREAKDOWN, str(opened.library)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
    return out.stdout.rstrip()


class AgentMemory:
    """The agent process's memory, polled: its peak RSS (VmHWM), and RSS and PSS (smaps_rollup) while
    it handles frames (some of the dropped frames handled, some left: its steady state)."""

    def __init__(self, pid: int, incoming: Path, frames: int) -> None:
        self.proc, self.incoming, self.frames = Path(f"/proc/{pid}"), incoming, frames
        self.peak = 0.0
        self.running: list[tuple[float, float]] = []  # (RSS, PSS) in MB, polled while handling frames

    def poll(self) -> bool:
        try:
            status = (self.proc / "status").read_text()
            rollup = (self.proc / "smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        kb = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+)", status + rollup, re.M)}
        if "VmHWM" not in kb or "Pss" not in kb:  # exiting: the fields go before the file
            return False
        self.peak = kb["VmHWM"] / 1024
        if 0 < sum(1 for _ in self.incoming.iterdir()) < self.frames:  # the folder source deletes handled frames
            self.running.append((kb["VmRSS"] / 1024, kb["Pss"] / 1024))
        return True

    def steady(self) -> str:
        if not self.running:
            return "no poll fell while frames were handled"
        rss, pss = (statistics.median(values) for values in zip(*self.running))
        return f"while handling frames RSS {rss:.1f}, PSS {pss:.1f} (median of {len(self.running)} polls)"


def peak_rss_of_agent(venv: Path, root: Path, frames: int = 20) -> tuple[AgentMemory, str]:
    """Runs `edgefleet agent run` from `venv` on MobileNetV2; returns its memory and its summary line."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "agent")]
    from agent_support import agent_config, drop_frame, write_config
    from support.broker import Broker

    from edgefleet.compiler.compile import compile_model
    from edgefleet.models.mobilenetv2 import save
    from edgefleet.package import Preprocessing
    from edgefleet.signing import create_signing_key, public_path

    sys.path[:0] = [str(REPO / "benchmarks")]
    from agent_overhead import camera_jpegs

    key = create_signing_key(root / "k.key")
    (root / "labels.txt").write_text("\n".join(f"class{i}" for i in range(1000)) + "\n")
    pkg = compile_model(
        str(save(root / "mobilenetv2.onnx")),
        "x86_64",
        output=root / "m.tar.gz",
        name="mobilenetv2",
        labels=root / "labels.txt",
        preprocessing=Preprocessing(resize=(224, 224)),
        key=key.path,
        verify=False,
        quiet=True,
    ).package
    broker = Broker(root / "broker")
    broker.start()
    try:
        config = write_config(
            root / "agent.toml",
            agent_config(root, broker, (pkg, public_path(key.path)), rules={"labels": ["class1"], "min_score": 0.0}),
        )
        for i, data in enumerate(camera_jpegs(frames)):
            drop_frame(root / "incoming", f"f{i:03d}.jpg", data)
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "python"),
                "-m",
                "edgefleet.cli",
                "agent",
                "run",
                "--config",
                str(config),
                "--max-frames",
                str(frames),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=root,
        )
        memory = AgentMemory(proc.pid, root / "incoming", frames)
        while proc.poll() is None and memory.poll():
            time.sleep(0.05)
        out = proc.communicate()[0]
        if proc.returncode != 0:
            raise SystemExit(f"the agent failed ({proc.returncode}):\n{out[-2000:]}")
        return memory, out.strip().splitlines()[-1] + "\n" + rss_breakdown(venv, pkg, root)
    finally:
        broker.stop()


def image_sizes() -> None:
    from edgefleet.cross.image import build_image

    for arch in ("arm64", "armhf"):
        result = build_image(arch, f"edgefleet-agent-footprint:{arch}")
        print(f"  image {arch:<6} {result.size_bytes / 1e6:7.1f} MB (docker image inspect Size; target <= 150)")
        subprocess.run(["docker", "image", "rm", "-f", result.tag], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", action="store_true", help="Also build the arm64 and armhf images (needs dockerd; ~2 min each)."
    )
    args = parser.parse_args()
    from edgefleet.cross.sysroot import find_sysroot

    with tempfile.TemporaryDirectory(prefix="edgefleet-footprint-") as tmp:
        root = Path(tmp)
        venv = agent_venv(root)
        site = next((venv / "lib").glob("python3.*/site-packages"))
        print_sizes(f"x86_64: pip install '.[agent]' into a fresh venv ({site})", distribution_sizes(site))
        for arch in ("arm64", "armhf"):
            sysroot = find_sysroot(arch)
            if sysroot is None:
                print(
                    f"\n{arch}: no sysroot for the current inputs "
                    f"(build it with `edgefleet cross sysroot --arch {arch}`)"
                )
            else:
                print_sizes(f"{arch}: the sysroot's site/ ({sysroot.path.name})", distribution_sizes(sysroot.site))
        memory, summary = peak_rss_of_agent(venv, root)
        print(
            f"\nagent RSS running MobileNetV2 (x86_64, 20 frames, real mosquitto): "
            f"peak {memory.peak:.1f} MB (VmHWM, the target's measure; target <= 60: {memory.peak / 60:.2f}x the target); "
            f"{memory.steady()}\n  {summary}"
        )
    if args.images:
        print()
        image_sizes()


if __name__ == "__main__":
    main()
