"""Reference architectures for benchmarks, built from code (no downloads, no torchvision).

Weights are random under a fixed seed: right for timing and numeric checks, meaningless as
classifiers. Each is written as ONNX with input "input" (float32 1x3xSxS) and output "logits".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgefleet.errors import UsageError


def _export_mobilenetv2(out: Path, size: int, classes: int, seed: int) -> None:
    # Written straight as an ONNX graph (batch norm folded) by models/mobilenetv2.py.
    from edgefleet.models.mobilenetv2 import save

    save(out, size=size, classes=classes, seed=seed)


def _export_scenenet(out: Path, size: int, classes: int, seed: int) -> None:
    import torch

    from edgefleet.models.train import SceneNet

    torch.manual_seed(seed)
    net = SceneNet(classes).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter needs no onnxscript; torch marks it deprecated in favour of dynamo.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            str(out),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            do_constant_folding=True,
        )


@dataclass(frozen=True)
class Reference:
    default_size: int
    description: str
    export: Callable[[Path, int, int, int], None]


REFERENCES: dict[str, Reference] = {
    "mobilenetv2": Reference(
        224, "MobileNetV2 1.0 (Sandler et al. 2018), batch norm folded, 3.49M parameters", _export_mobilenetv2
    ),
    "scenenet": Reference(
        64, "the camera scene classifier that models/train.py trains, 61k parameters", _export_scenenet
    ),
}


def export_reference(
    name: str, out: Path, *, input_size: int | None = None, classes: int = 1000, seed: int = 0
) -> Path:
    """Write reference `name` as ONNX to `out` (input 1x3xSxS, S = `input_size` or its default)."""
    if name not in REFERENCES:
        raise UsageError(f"unknown reference architecture {name!r}", f"use one of: {', '.join(sorted(REFERENCES))}")
    size = input_size or REFERENCES[name].default_size
    if not 16 <= size <= 1024:
        raise UsageError(f"input size {size} is outside 16..1024", "pick a size like 224")
    if classes < 2:
        raise UsageError(f"classes={classes}", "a classifier needs at least 2 classes")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    REFERENCES[name].export(out, size, classes, seed)
    return out
