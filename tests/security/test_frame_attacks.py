"""Malformed camera frames: each refused with a counted reason before it costs memory; only the
formats cameras produce are decoded (agent/preprocess.py)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from edgefleet.agent.preprocess import MAX_PIXELS, FrameRejected, decode_image


def encoded(fmt: str, size=(32, 24), mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (zlib makes the pixel data tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * min(height, 8192), 9)  # complete up to 8192 rows: a real decode
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded("JPEG", (8, 8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# (row id, frame bytes, counted reason or None when it must decode)
FRAMES = [
    ("empty", lambda: b"", "empty"),
    ("truncated-jpeg", lambda: encoded("JPEG", (640, 480))[:300], "undecodable"),
    ("random-bytes", lambda: bytes(range(256)) * 8, "undecodable"),
    ("png-header-64-megapixel", lambda: png_claiming(8000, 8000), "oversize_pixels"),
    ("png-header-30000-square", lambda: png_claiming(30000, 30000), "oversize_pixels"),
    ("jpeg-header-65535-square", lambda: jpeg_claiming(65535, 65535), "oversize_pixels"),
    ("just-over-the-pixel-cap", lambda: png_claiming(4097, 4096), "oversize_pixels"),
    ("60MiB-frame", lambda: b"\xff\xd8" + bytes(60 * 1024**2), "oversize_bytes"),
    ("gif", lambda: encoded("GIF"), "unsupported_format"),
    ("tiff", lambda: encoded("TIFF"), "unsupported_format"),
    ("webp", lambda: encoded("WEBP"), "unsupported_format"),
    ("pdf", lambda: b"%PDF-1.4\n" + b"x" * 100, "unsupported_format"),
    ("ico", lambda: encoded("ICO", (16, 16)), "unsupported_format"),
    ("control-jpeg", lambda: encoded("JPEG"), None),
    ("control-png-16bit-grey", lambda: encoded("PNG", mode="I;16"), None),
    ("control-bmp", lambda: encoded("BMP"), None),
    ("control-ppm", lambda: encoded("PPM"), None),
]


@pytest.mark.parametrize("make, reason", [r[1:] for r in FRAMES], ids=[r[0] for r in FRAMES])
def test_frames_are_refused_with_their_reason(make, reason):
    data = make()
    if reason is None:
        assert decode_image(data).size[0] > 0
        return
    with pytest.raises(FrameRejected) as caught:
        decode_image(data)
    assert caught.value.reason == reason


PROBE = """
import sys
from edgefleet.agent.preprocess import decode_image, FrameRejected
data = open(sys.argv[1], "rb").read()
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before = hwm()
try:
    decode_image(data).convert("RGB")
except FrameRejected as exc:
    print("refused", exc.reason)
print("grew_kib", hwm() - before)
"""


@pytest.mark.parametrize(
    "side, refused", [(8000, True), (4096, False)], ids=["204KB-png-claiming-64MP", "largest-allowed-frame"]
)
def test_decoding_memory_is_bounded(tmp_path, side, refused):
    """Hole 8: a ~200 KB PNG took the agent from 433 to 873 MiB. Measured in a fresh process."""
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_claiming(side, side))
    out = subprocess.run([sys.executable, "-c", PROBE, str(frame)], capture_output=True, text=True, timeout=60).stdout
    grew_mib = int(out.split("grew_kib")[1]) / 1024
    print(f"{side}x{side} PNG of {frame.stat().st_size // 1024} KiB: peak memory grew {grew_mib:.0f} MiB")
    assert ("refused" in out) is refused, out
    assert grew_mib < (16 if refused else 4 * MAX_PIXELS / 1024**2 * 2.5), f"peak memory grew {grew_mib:.0f} MiB"
