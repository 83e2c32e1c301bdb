#!/usr/bin/env bash
# Installs everything edgefleet, its tests and its demo need on a fresh Debian 12 machine:
# Debian packages (cross compilers, QEMU, mosquitto, PostgreSQL, docker, chromium) and a
# virtualenv in .venv with the project and all its extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf
  qemu-user-static qemu-user debootstrap binfmt-support
  mosquitto mosquitto-clients
  postgresql
  docker.io
  chromium chromium-driver
  file ffmpeg
  systemd
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts services on install where it can; edgefleet starts its own brokers and
# databases, so a system mosquitto holding port 1883 would only confuse the demo.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto || true
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch comes from the CPU build (the `train` extra pins it); everything else from PyPI.
.venv/bin/python -m pip install -q -e '.[dev,train]'
# The camera runtime for this machine: agents and the compiler's verification run packages on
# it. Built from TVM's sources once (~4 CPU-minutes) and cached by input hash in
# ~/.cache/edgefleet/runtime, so later runs take seconds (docs/runtime.md).
.venv/bin/edgefleet runtime build --arch "$(uname -m)"
echo "setup: done (.venv/bin/edgefleet)"
