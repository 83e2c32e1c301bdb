#!/bin/sh
# Build edgefleet's camera runtime with CUDA on a Jetson, against the board's own CUDA (JetPack 5/6).
# UNTESTED ON A BOARD (docs/runtime.md): checked on x86 for syntax and with --dry-run only.
#
#   scripts/jetson_runtime_build.sh [--sm sm_87] [--tvm-source tvm-v0.27.dev0-src.tar.gz] [--dry-run]
#
# Runs on the board from an edgefleet checkout. It makes a venv with what `edgefleet runtime build`
# needs (edgefleet, the apache-tvm wheel whose runtime sources are built, CMake from PyPI), then runs
# `edgefleet runtime build --arch aarch64 --cuda SM`, the same steps as every other bundle with
# USE_CUDA=ON; runtime.json then records cuda: {version, sms}. The GPU is read from the device tree.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${EDGEFLEET_JETSON_VENV:-$HOME/.cache/edgefleet/jetson-venv}
compatible=${EDGEFLEET_DT_COMPATIBLE:-/proc/device-tree/compatible}  # tests point this at a fake
sm="" tvm_source="" dry_run=""

while [ $# -gt 0 ]; do
    case "$1" in
        --sm) sm=$2; shift 2 ;;
        --tvm-source) tvm_source=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        *) echo "error: unknown option $1" >&2; echo "fix: see the usage at the top of $0" >&2; exit 2 ;;
    esac
done

fail() { echo "error: $1" >&2; echo "fix: $2" >&2; exit 1; }
run() { echo "+ $*"; [ -n "$dry_run" ] || "$@"; }

# The GPU from the SoC: Orin (tegra234) is sm_87, Xavier (tegra194) sm_72. Nano/TX (tegra210) has
# only JetPack 4, whose Ubuntu 18.04 and Python 3.6 edgefleet does not support.
if [ -z "$sm" ]; then
    [ -r "$compatible" ] ||
        fail "$compatible is missing: this is not a Jetson" "run this on the Jetson, or pass --sm sm_87|sm_72"
    case "$(tr '\0' ' ' < "$compatible")" in
        *tegra234*) sm=sm_87 ;;
        *tegra194*) sm=sm_72 ;;
        *) fail "unsupported SoC: $(tr '\0' ' ' < "$compatible")" \
                "edgefleet supports Orin (JetPack 6; 5 with Python >= 3.10) and Xavier (JetPack 5); --sm overrides";;
    esac
fi

PATH=$PATH:/usr/local/cuda/bin
if [ -z "$dry_run" ]; then
    command -v nvcc >/dev/null ||
        fail "nvcc is not installed" "sudo apt-get install nvidia-jetpack (JetPack's CUDA toolkit)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        fail "python3 is $(python3 -V 2>&1 | cut -d' ' -f2); edgefleet needs >= 3.10 (JetPack 5 ships 3.8)" \
            "install python3.10 (e.g. deadsnakes) and put it first on PATH"
fi

run python3 -m venv "$venv"
# The compiler role's pins, without the rest of it: the wheel is only read for its runtime sources.
run "$venv/bin/python" -m pip install --quiet "$repo[agent]" \
    "apache-tvm==0.27.0.post1" "apache-tvm-ffi==0.1.14.post0" "cmake>=3.26,<4"
set -- --arch aarch64 --cuda "$sm" --json
[ -z "$tvm_source" ] || set -- "$@" --tvm-source "$tvm_source"
run "$venv/bin/python" -m edgefleet.cli runtime build "$@"
