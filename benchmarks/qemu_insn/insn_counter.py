"""Guest instruction counts of one inference under QEMU user mode, for ARM boards we do not have.

Pieces, each cached by what it is built from under `$XDG_CACHE_HOME/edgefleet/qemu-insn`:

- `plugin_header()`: QEMU 7.2's `qemu-plugin.h`, which Debian's qemu-user does not ship. It is
  taken from Debian's own source package of the installed QEMU (`apt-get source --download-only
  qemu`, with a private apt state whose deb-src entries mirror this machine's Debian entries),
  the upstream tarball checked against its sha256, the header against its own.
- `build_plugin()`: insn_count.c (beside this file) compiled against that header with the host cc.
- `guest_wheels()`: the aarch64 onnxruntime and ai-edge-litert wheels of the versions installed
  here (pip download --platform, --no-deps: inference needs only numpy, which the sysroot has).
- `overlay_root()`: the sysroot seen through symlinks plus a `/proc/cpuinfo` of the board. Both
  wheels read it (cpuinfo library) and crash on the x86 host's; QEMU's -L prefix serves ours.
- `count()`: runs benchmarks/qemu_insn/guest.py under `qemu-aarch64 -cpu cortex-a72 -plugin ...`
  and reads the plugin's per-window counts.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.cross.emulate import QemuOptions, run_emulated
from edgefleet.cross.sysroot import Sysroot, require_tool
from edgefleet.errors import BuildError, UsageError

HERE = Path(__file__).resolve().parent
PLUGIN_SOURCE = HERE / "insn_count.c"
GUEST_SCRIPT = HERE / "guest.py"
# The syscall argument that opens a counting window (the next value closes it); guest.py gets it too.
MARK = 0x3EF00000

# Debian bookworm's qemu source: the upstream 7.2.0 tarball (plugin API version 1) is the same in
# every bookworm revision; Debian's patches do not touch the header.
QEMU_SERIES = "7.2"
ORIG_TARBALL = "qemu_7.2+dfsg.orig.tar.xz"
ORIG_SHA256 = "91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f"
HEADER_MEMBER = "qemu-7.2.0/include/qemu/qemu-plugin.h"
HEADER_SHA256 = "19f277b037d05a8bcb5069f2f81a465d177208e5903048a915c56627d4c3748e"

GUEST_RUNTIMES = ("onnxruntime", "ai-edge-litert")


@dataclass(frozen=True)
class Board:
    """A camera board as QEMU user mode can present it: the CPU model and the guest's /proc/cpuinfo."""

    name: str
    sysroot_arch: str  # arm64 | armhf
    qemu: str
    cpu: str
    cpuinfo: str


def _cpuinfo_v8(features: str, part: str, variant: str, revision: int) -> str:
    block = (
        f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
    )
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(4))


# Features, parts and revisions as the boards' kernels print them.
BOARDS = {
    "rasp4b": Board(
        "rasp4b", "arm64", "qemu-aarch64", "cortex-a72", _cpuinfo_v8("fp asimd evtstrm crc32 cpuid", "0xd08", "0x0", 3)
    ),
    "rasp5": Board(
        "rasp5",
        "arm64",
        "qemu-aarch64",
        "cortex-a76",
        _cpuinfo_v8(
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
            "0xd0b",
            "0x4",
            1,
        ),
    ),
    # qemu-arm has no Cortex-A53; `max` is an ARMv8-A core in AArch32 state, which is what a Pi 3
    # runs under a 32-bit OS (the package is compiled for cortex-a53 in armv7 mode).
    "rasp3b": Board(
        "rasp3b",
        "armhf",
        "qemu-arm",
        "max",
        "".join(
            f"processor\t: {i}\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\n"
            "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n"
            "CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n"
            for i in range(4)
        ),
    ),
}


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgefleet" / "qemu-insn"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished file or folder into place; a concurrent builder that won keeps its copy."""
    try:
        os.replace(tmp, final) if tmp.is_file() else tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def require_qemu_series(qemu: str) -> None:
    """The header is QEMU 7.2's (plugin API 1): refuse another QEMU rather than load a mismatched plugin."""
    out = subprocess.run([require_tool(qemu), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"version (\d+\.\d+)", out)
    if not found or found.group(1) != QEMU_SERIES:
        raise UsageError(
            f"{qemu} is {found.group(1) if found else 'of unknown version'}; the instruction counter is built for QEMU {QEMU_SERIES}",
            "use Debian bookworm's qemu-user (apt-get install qemu-user)",
        )


def _deb_src_entries() -> str:
    """deb822 deb-src stanzas for this machine's Debian suites (its codename and codename-*)."""
    codename = re.search(r"^VERSION_CODENAME=(\S+)", Path("/etc/os-release").read_text(), re.M)
    if codename is None:
        raise UsageError(
            "/etc/os-release names no Debian codename", "run on Debian (bookworm), where qemu-user 7.2 comes from"
        )
    stanzas = []
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in source.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\S+):\s*(.*)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            if (
                "deb" in fields.get("Types", "").split()
                and suites
                and all(s == codename.group(1) or s.startswith(codename.group(1) + "-") for s in suites)
            ):
                stanzas.append(re.sub(r"^Types:.*$", "Types: deb-src", stanza.strip(), flags=re.M))
    if not stanzas:
        raise UsageError(
            f"no Debian {codename.group(1)} entries in /etc/apt/sources.list.d/*.sources",
            "the qemu-plugin.h header comes from Debian's qemu source package",
        )
    return "\n\n".join(stanzas) + "\n"


def plugin_header(cache: Path | None = None) -> Path:
    """The folder holding QEMU 7.2's qemu-plugin.h, fetched from Debian's source package once."""
    folder = (cache or cache_root()) / f"include-{HEADER_SHA256[:16]}"
    if (folder / "qemu-plugin.h").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    apt = require_tool("apt-get")
    with tempfile.TemporaryDirectory(prefix="qemu-src-", dir=folder.parent) as tmp:
        state = Path(tmp)
        for sub in ("lists/partial", "archives/partial", "sources.list.d", "dl"):
            (state / sub).mkdir(parents=True)
        (state / "sources.list.d" / "debian-src.sources").write_text(_deb_src_entries())
        opts = [
            "-oDir::Etc::SourceList=/dev/null",
            f"-oDir::Etc::SourceParts={state}/sources.list.d",
            f"-oDir::State::Lists={state}/lists",
            f"-oDir::Cache::Archives={state}/archives",
            "-oDir::Cache::pkgcache=",
            "-oDir::Cache::srcpkgcache=",
            "-q",
        ]
        print("qemu-insn: fetching Debian's qemu source package for qemu-plugin.h (~24 MB, once)", flush=True)
        for argv in ([apt, *opts, "update"], [apt, *opts, "source", "--download-only", "qemu"]):
            done = subprocess.run(argv, cwd=state / "dl", capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(
                    f"`apt-get {argv[len(opts) + 1]}` for the qemu source failed: {done.stderr.strip()[-400:]}",
                    "check that the Debian mirror is reachable",
                )
        orig = state / "dl" / ORIG_TARBALL
        if not orig.exists() or _sha256(orig) != ORIG_SHA256:
            raise BuildError(
                f"Debian's {ORIG_TARBALL} is missing or its sha256 is not {ORIG_SHA256}",
                "the counter is written for QEMU 7.2 (Debian bookworm)",
            )
        out = state / "include"
        out.mkdir()
        with tarfile.open(orig) as tar:
            member = tar.extractfile(HEADER_MEMBER)
            (out / "qemu-plugin.h").write_bytes(member.read())
        if _sha256(out / "qemu-plugin.h") != HEADER_SHA256:
            raise BuildError(f"{HEADER_MEMBER} in {ORIG_TARBALL} has an unexpected sha256", "")
        return _publish(out, folder)


def build_plugin(cache: Path | None = None) -> Path:
    """insn_count.c as a host shared library, rebuilt when the source, the header or the compiler change."""
    cache = cache or cache_root()
    include = plugin_header(cache)
    cc = require_tool(os.environ.get("CC", "gcc"))
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        PLUGIN_SOURCE.read_bytes() + (include / "qemu-plugin.h").read_bytes() + version.encode()
    ).hexdigest()[:16]
    library = cache / f"insn_count-{key}.so"
    if library.exists():
        return library
    tmp = cache / f".insn_count-{os.getpid()}.so"
    done = subprocess.run(
        [
            cc,
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-parameter",
            "-I",
            str(include),
            "-o",
            str(tmp),
            str(PLUGIN_SOURCE),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BuildError(f"compiling {PLUGIN_SOURCE.name} failed: {done.stderr.strip()[-600:]}", "")
    return _publish(tmp, library)


def guest_wheels(cache: Path | None = None) -> Path:
    """A folder with the aarch64 cp311 onnxruntime and ai-edge-litert of the versions installed here, unzipped."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in GUEST_RUNTIMES]
    site = (cache or cache_root()) / ("site-aarch64-" + hashlib.sha256(" ".join(pins).encode()).hexdigest()[:16])
    if site.exists():
        return site
    site.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=site.parent) as tmp:
        platforms = [
            a
            for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
            for a in ("--platform", p)
        ]
        print(f"qemu-insn: pip download {' '.join(pins)} for aarch64 (once)", flush=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                *platforms,
                "-d",
                tmp,
                *pins,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise BuildError(
                f"pip download {' '.join(pins)} failed: {done.stderr.strip()[-400:]}", "check that PyPI is reachable"
            )
        out = Path(tmp) / "site"
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(out)
        return _publish(out, site)


def overlay_root(sysroot: Sysroot, board: Board, into: Path) -> Path:
    """`into` as a -L root: the sysroot's top-level folders as symlinks, and the board's /proc/cpuinfo."""
    for entry in sysroot.root.iterdir():
        if entry.name != "proc":
            (into / entry.name).symlink_to(entry)
    (into / "proc").mkdir()
    (into / "proc" / "cpuinfo").write_text(board.cpuinfo)
    return into


@dataclass
class Counted:
    """Instructions per counting window (one inference each): the inferring thread's, and all threads'."""

    thread: list[int]
    all_threads: list[int]
    output: np.ndarray
    # With profile=True: instructions in windows per translated block's guest address, and the
    # guest's /proc/self/maps to place them (see `by_function`).
    blocks: dict[int, int] | None = None
    maps: str = ""

    @property
    def per_inference(self) -> int:
        return min(self.thread)

    @property
    def spread(self) -> int:
        return max(self.thread) - min(self.thread)


def count(
    board: Board,
    sysroot: Sysroot,
    runtime: str,
    model: Path,
    feed: np.ndarray,
    *,
    windows: int = 3,
    warmup: int = 2,
    plugin: Path | None = None,
    cache: Path | None = None,
    timeout: float = 1800,
    profile: bool = False,
) -> Counted:
    """Instructions of `windows` single inferences of `model` on `runtime` (edgefleet | onnxruntime | litert), after `warmup`;
    with `profile`, also per translated block (`by_function` sums them per function)."""
    plugin = plugin or build_plugin(cache)
    with tempfile.TemporaryDirectory(prefix="qemu-insn-") as tmp:
        work = Path(tmp)
        np.save(work / "input.npy", feed)
        (work / "root").mkdir()
        root = overlay_root(sysroot, board, work / "root")
        log = work / "plugin.log"
        extra = (guest_wheels(cache),) if runtime != "edgefleet" else ()
        options = QemuOptions(
            binary=board.qemu,
            root=root,
            python_path=extra,
            options=(
                "-cpu",
                board.cpu,
                "-plugin",
                f"{plugin},mark={MARK}" + (",profile=1" if profile else ""),
                "-d",
                "plugin",
                "-D",
                str(log),
            ),
        )
        command = [
            "python3",
            str(GUEST_SCRIPT),
            "--runtime",
            runtime,
            "--model",
            str(Path(model).resolve()),
            "--input",
            str(work / "input.npy"),
            "--output",
            str(work / "output.npy"),
            "--mark",
            str(MARK),
            "--windows",
            str(windows),
            "--warmup",
            str(warmup),
            *(["--maps", str(work / "maps.txt")] if profile else []),
        ]
        done = run_emulated(sysroot, command, capture=True, timeout=timeout, qemu=options)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise BuildError(
                f"{runtime} on {board.name} under {board.qemu} exited {done.returncode}: {' | '.join(tail)}", ""
            )
        rows = [
            tuple(map(int, line.split()[1:])) for line in log.read_text().splitlines() if line.startswith("window ")
        ]
        if len(rows) != windows:
            raise BuildError(f"the plugin reported {len(rows)} windows, expected {windows}", f"see {log}")
        counted = Counted([r[0] for r in rows], [r[1] for r in rows], np.load(work / "output.npy"))
        if profile:
            counted.blocks = {}
            for line in log.read_text().splitlines():
                if line.startswith("block "):
                    _, address, insns = line.split()
                    counted.blocks[int(address, 16)] = counted.blocks.get(int(address, 16), 0) + int(insns)
            counted.maps = (work / "maps.txt").read_text()
        return counted


def _symbols(library: Path, nm: str) -> tuple[list[int], list[str]]:
    """(sorted start addresses, names) of a shared library's functions, from its symbol tables."""
    found: dict[int, str] = {}
    for flags in (["-D"], []):
        out = subprocess.run([nm, *flags, "--defined-only", str(library)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                found.setdefault(int(parts[0], 16), parts[2])
    starts = sorted(found)
    return starts, [found[a] for a in starts]


def by_function(counted: Counted, nm: str = "aarch64-linux-gnu-nm") -> dict[str, int]:
    """Instructions in the windows (summed over them) per function: `library:symbol` where the
    block lies in a mapped file with symbols, `library:?` in one without, `?` outside any file
    (JIT code, QEMU's signal trampolines)."""
    if counted.blocks is None:
        raise UsageError("no per-block counts", "count with profile=True")
    nm = require_tool(nm)
    spans = []  # (start, end, path, load base) of executable file mappings
    bases: dict[str, int] = {}
    for line in counted.maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        bases.setdefault(parts[5], start - int(parts[2], 16))
        if "x" in parts[1]:
            spans.append((start, end, parts[5]))
    tables = {}
    totals: dict[str, int] = {}
    for address, insns in counted.blocks.items():
        span = next((s for s in spans if s[0] <= address < s[1]), None)
        name = "?"
        if span is not None:
            path = span[2]
            if path not in tables:
                tables[path] = _symbols(Path(path), nm)
            starts, names = tables[path]
            i = bisect.bisect_right(starts, address - bases[path]) - 1
            name = f"{Path(path).name}:{names[i] if i >= 0 else '?'}"
        totals[name] = totals.get(name, 0) + insns
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
