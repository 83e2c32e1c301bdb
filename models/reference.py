"""Reference architectures for benchmarks, built in torch from code (no downloads, no torchvision).

Weights are torch's default initialisation under a fixed seed: right for timing and numeric
checks, meaningless as classifiers. Each is exported to ONNX (opset 17, fixed batch of 1).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from edgefleet.errors import UsageError

# name -> (module:callable(classes) -> torch.nn.Module, default input size, what it is)
REFERENCES: dict[str, tuple[str, int, str]] = {
    "scenenet": ("edgefleet.models.train:SceneNet", 64, "the camera scene classifier models/train.py trains (~61k params)"),
    "mobilenetv2": ("edgefleet.models.mobilenetv2:MobileNetV2", 224, "MobileNetV2 1.0 (Sandler et al. 2018), ~3.5M params"),
}


def build_reference(name: str, *, classes: int = 1000, seed: int = 0):
    """The torch module for reference `name`, in eval mode, seeded."""
    if name not in REFERENCES:
        raise UsageError(f"unknown reference architecture {name!r}", f"use one of: {', '.join(sorted(REFERENCES))}")
    if classes < 2:
        raise UsageError(f"classes={classes}", "a classifier needs at least 2 classes")
    import torch

    module, _, attr = REFERENCES[name][0].partition(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(module), attr)(classes).eval()


def export_reference(name: str, out: Path, *, input_size: int | None = None, classes: int = 1000, seed: int = 0) -> Path:
    """Export reference `name` to ONNX at `out`: input "input" 1x3xSxS float32, output "logits"."""
    import torch

    size = input_size or REFERENCES.get(name, ("", 224, ""))[1]
    if not 16 <= size <= 1024:
        raise UsageError(f"input size {size} is outside 16..1024", "pick a size like 224")
    net = build_reference(name, classes=classes, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter needs no onnxscript; torch marks it deprecated in favour of dynamo.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(out), dynamo=False, input_names=["input"], output_names=["logits"], opset_version=17, do_constant_folding=True)
    return out
