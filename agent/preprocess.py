"""Camera frame -> model input, exactly as the package's manifest says (see Preprocessing)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgefleet.agent.boxes import Geometry, resized_size
from edgefleet.errors import BadInputError
from edgefleet.package import Preprocessing, TensorSpec

# What a decoded frame may cost, checked from the header before any pixel is decoded: Pillow
# keeps up to 4 bytes a pixel (RGB is stored as RGBX), so 16 MP (4K UHD is 8.3 MP, a 12 MP
# still fits) is at most 64 MiB per frame, whatever the file size (a 200 KB PNG can claim 64 MP).
MAX_PIXELS = 16 * 1024 * 1024
MAX_FRAME_BYTES = 50 * 1024 * 1024
# What cameras and frame grabbers produce; every other Pillow decoder (TIFF, PSD, EPS via
# Ghostscript, ICO, ...) is attack surface the agent does not need.
FORMATS = ("JPEG", "PNG", "BMP", "PPM")
MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "I;16", "I", "F"})


class FrameRejected(BadInputError):
    """A frame that cannot be used; `reason` is one of REASONS (what the agent counts)."""

    def __init__(self, reason: str, cause: str, fix: str) -> None:
        super().__init__(cause, fix)
        self.reason = reason


REASONS = ("empty", "oversize_bytes", "oversize_pixels", "undecodable", "unsupported_format")


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG/... bytes fully, or raise FrameRejected saying what is wrong."""
    if not data:
        raise FrameRejected("empty", "empty frame (0 bytes)", "check the camera source")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameRejected(
            "oversize_bytes",
            f"frame is {len(data)} bytes, over the {MAX_FRAME_BYTES}-byte cap",
            "lower the camera resolution",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            if image.mode not in MODES:
                raise FrameRejected(
                    "unsupported_format",
                    f"frame pixel mode {image.mode} is not one a camera produces",
                    "send 8-bit JPEG or PNG",
                )
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise FrameRejected(
                    "oversize_pixels",
                    f"frame header claims {width}x{height} pixels, over the {MAX_PIXELS}-pixel cap",
                    "lower the camera resolution",
                )
            image.load()
    except FrameRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameRejected(
            "oversize_pixels", f"frame header claims too many pixels ({str(exc)[:80]})", "lower the camera resolution"
        ) from None
    except UnidentifiedImageError as exc:
        other = _foreign_format(data)
        if other:
            raise FrameRejected(
                "unsupported_format", f"unsupported frame format {other}", f"cameras send {', '.join(FORMATS)}"
            ) from None
        raise FrameRejected(
            "undecodable", f"undecodable frame ({str(exc)[:120]})", "check the camera's image format"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise FrameRejected(
            "undecodable",
            f"undecodable frame ({type(exc).__name__}: {str(exc)[:120]})",
            "check the camera's image format",
        ) from None
    return image


# Magic bytes of image formats the agent refuses, so that they are counted as such, not as damage.
FOREIGN = {
    b"GIF8": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"8BPS": "PSD",
    b"%PDF": "PDF",
    b"%!PS": "PostScript",
    b"\x00\x00\x01\x00": "ICO",
    b"\x00\x00\x00\x0c": "JPEG 2000",
    b"\xffO\xffQ": "JPEG 2000",
}


def _foreign_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return FOREIGN.get(data[:4])


def input_hw(spec: TensorSpec, pre: Preprocessing) -> tuple[int, int]:
    if pre.resize:
        return pre.resize
    if len(spec.shape) != 4:
        raise BadInputError(
            f"input {spec.name} has shape {spec.shape}, not an image batch", "set preprocessing.resize when compiling"
        )
    return (spec.shape[2], spec.shape[3]) if pre.layout == "NCHW" else (spec.shape[1], spec.shape[2])


def geometry(frame_size: tuple[int, int], spec: TensorSpec, pre: Preprocessing) -> Geometry:
    """Where a frame of this (width, height) lands in the model input: what maps boxes back."""
    height, width = input_hw(spec, pre)
    return Geometry.fit(frame_size[0], frame_size[1], width, height, pre.resize_mode == "letterbox")


def _resize(image: Image.Image, width: int, height: int, pre: Preprocessing) -> Image.Image:
    resample = Image.Resampling.BILINEAR if pre.interpolation == "bilinear" else Image.Resampling.NEAREST
    if pre.resize_mode != "letterbox":
        return image if image.size == (width, height) else image.resize((width, height), resample)
    new_w, new_h = resized_size(image.width, image.height, width, height)
    canvas = Image.new(image.mode, (width, height), pre.pad_value if image.mode == "L" else (pre.pad_value,) * 3)
    # The same centring as Geometry.fit, so boxes map back exactly.
    canvas.paste(image.resize((new_w, new_h), resample), ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def preprocess(image: Image.Image, spec: TensorSpec, pre: Preprocessing) -> np.ndarray:
    mode = "L" if pre.color_order == "GRAY" else "RGB"
    image = image.convert(mode)
    height, width = input_hw(spec, pre)
    image = _resize(image, width, height, pre)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre.color_order == "BGR":
        pixels = pixels[:, :, ::-1]
    if np.dtype(spec.dtype).kind == "f":
        channels = pixels.shape[2]
        mean = np.asarray(pre.mean[:channels], dtype=np.float32)
        std = np.asarray(pre.std[:channels], dtype=np.float32)
        pixels = (pixels * np.float32(pre.scale) - mean) / std
    if pre.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None]).astype(spec.dtype)
