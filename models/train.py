"""SageMaker script-mode training entry point for the camera scene classifier.

The same file runs in a SageMaker PyTorch training job (`entry_point="train.py"`) and locally
(`edgefleet models train`, which sets the same environment). It imports only torch, numpy and
pillow, never edgefleet, so it can be uploaded on its own.

Inputs, as SageMaker passes them:
- hyperparameters as command-line flags (`--epochs 8 --lr 0.003`); SM_HPS (JSON) gives the
  defaults, so both ways work and the flags win;
- SM_CHANNEL_TRAIN (required) and SM_CHANNEL_VALIDATION (optional): folders with one
  sub-folder of images per class; without a validation channel a seeded share of train is held out;
- SM_MODEL_DIR: everything written here becomes model.tar.gz (SageMaker tars it, files at the root);
- SM_OUTPUT_DATA_DIR: metrics.json (becomes output.tar.gz); SM_OUTPUT_DIR: the `failure` file
  whose text SageMaker shows as the job's FailureReason; SM_NUM_CPUS: torch threads with --threads 0.

Writes into SM_MODEL_DIR: model.onnx (input "input" float32 1x3xHxW, output "probs", softmax
scores), labels.txt (one class per line, in output order), preprocessing.json (format 1: the
edgefleet package Preprocessing fields, so serving preprocesses exactly as training did) and
training.json (format 1: hyperparameters, classes, metrics).
Logs `epoch=N train_loss=X validation_accuracy=Y` lines for SageMaker metric_definitions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm"}
# Per-channel normalisation after scaling pixels to [0, 1]; written to preprocessing.json.
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]


class InputProblem(Exception):
    """Bad training input or hyperparameters: reported in the failure file, exit code 2."""


class SceneNet(nn.Module):
    """A stride-2 stem, then three conv blocks (conv-BN-ReLU), global average pool, linear: ~61k params.

    Small on purpose: it trains in well under a minute on two CPU cores and compiles in seconds.
    """

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i in (0, 1):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(chans[-1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WithSoftmax(nn.Module):
    """What is exported: scores that sum to one, so devices and drift summaries see confidences."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _hp(hps: dict, name: str, default):
    # SageMaker users spell hyperparameters with dashes or underscores; accept both.
    return hps.get(name, hps.get(name.replace("-", "_"), default))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit before the failure file is written
        raise InputProblem(f"bad hyperparameters: {message}")


def script_args(
    description: str, defaults: dict, checks, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> argparse.Namespace:
    """The hyperparameters and SageMaker paths every scene entry point takes (train.py,
    train_detector.py). `defaults` gives `epochs` and `image-size`; `checks(args)` returns the
    script's own (ok, message) pairs beside the common ones."""
    env = dict(os.environ if env is None else env)
    try:
        hps = json.loads(env.get("SM_HPS") or "{}")
    except json.JSONDecodeError as exc:
        raise InputProblem(f"SM_HPS is not JSON: {exc}") from None
    if not isinstance(hps, dict):
        raise InputProblem("SM_HPS is not a JSON object")
    p = _Parser(description=description)
    p.add_argument("--epochs", type=int, default=_hp(hps, "epochs", defaults["epochs"]))
    p.add_argument("--lr", "--learning-rate", "--learning_rate", dest="lr", type=float, default=_hp(hps, "lr", 0.005))
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=_hp(hps, "batch-size", 32))
    p.add_argument(
        "--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=_hp(hps, "weight-decay", 1e-4)
    )
    p.add_argument(
        "--image-size",
        "--image_size",
        dest="image_size",
        type=int,
        default=_hp(hps, "image-size", defaults["image-size"]),
    )
    p.add_argument("--width", type=int, default=_hp(hps, "width", 16), help="channels of the first conv block")
    p.add_argument(
        "--val-fraction", "--val_fraction", dest="val_fraction", type=float, default=_hp(hps, "val-fraction", 0.2)
    )
    p.add_argument("--seed", type=int, default=_hp(hps, "seed", 0))
    p.add_argument("--threads", type=int, default=_hp(hps, "threads", 1), help="torch threads; 0 = SM_NUM_CPUS")
    p.add_argument("--model-dir", dest="model_dir", default=env.get("SM_MODEL_DIR"))
    p.add_argument("--train", default=env.get("SM_CHANNEL_TRAIN"))
    p.add_argument("--validation", default=env.get("SM_CHANNEL_VALIDATION"))
    p.add_argument("--output-data-dir", dest="output_data_dir", default=env.get("SM_OUTPUT_DATA_DIR"))
    args = p.parse_args(argv)
    if not args.model_dir or not args.train:
        raise InputProblem("SM_MODEL_DIR and SM_CHANNEL_TRAIN must be set (or --model-dir and --train given)")
    common = [
        (args.epochs >= 1, "epochs must be >= 1"),
        (args.lr > 0, "lr must be > 0"),
        (args.batch_size >= 1, "batch-size must be >= 1"),
        (0 < args.val_fraction < 1, "val-fraction must be between 0 and 1"),
        (args.threads >= 0, "threads must be >= 0"),
    ]
    for ok, message in common + list(checks(args)):
        if not ok:
            raise InputProblem(f"bad hyperparameters: {message}")
    return args


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    return script_args(
        "Train the edgefleet camera scene classifier (SageMaker script mode).",
        {"epochs": 10, "image-size": 64},
        lambda a: [
            (16 <= a.image_size <= 512, "image-size must be 16..512"),
            (1 <= a.width <= 256, "width must be 1..256"),
        ],
        argv,
        env,
    )


def load_image(path: Path, size: int) -> np.ndarray:
    """File -> float32 HxWx3 in [0, 1]: RGB, bilinear resize on 8-bit pixels, as the edgefleet agent does."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise InputProblem(f"cannot read image {path}: {exc}") from None


def load_channel(root: str, size: int, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An ImageFolder-style channel -> (N x 3 x H x W pixels in [0, 1], labels, class names)."""
    folder = Path(root)
    if not folder.is_dir():
        raise InputProblem(f"channel folder {root} does not exist")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise InputProblem(
                f"{root} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); a classifier needs at least 2"
            )
    elif found != classes:
        raise InputProblem(f"{root} has classes {found} but the train channel has {classes}")
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputProblem(f"class folder {folder / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images += [load_image(f, size) for f in files]
        labels += [index] * len(files)
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.asarray(labels, dtype=np.int64), classes


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def augment(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flips and brightness jitter: what a camera's scene and exposure vary."""
    n = pixels.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    pixels = torch.where(flip.view(n, 1, 1, 1), pixels.flip(3), pixels)
    gain = 0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    return (pixels * gain).clamp(0, 1)


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(normalise(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((predicted == y).float().mean())


def seed_and_threads(args: argparse.Namespace) -> torch.Generator:
    """Seeds torch and sets its threads; returns the generator for the data loader's shuffling."""
    torch.manual_seed(args.seed)
    # One thread by default: these nets' convolutions are too small to gain from more, and on a
    # busy machine extra threads spin: 2 threads trained 8-15x slower (benchmarks/models_training.py).
    cpus = os.environ.get("SM_NUM_CPUS", "")
    torch.set_num_threads(int(cpus) if args.threads == 0 and cpus.isdigit() else max(1, args.threads))
    return torch.Generator().manual_seed(args.seed)


def holdout(count: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices when no validation channel is given: a seeded share held out."""
    order = np.random.default_rng(args.seed).permutation(count)
    held = max(1, int(count * args.val_fraction))
    if held >= count:
        raise InputProblem(f"only {count} training images: too few to hold out a validation share")
    return order[:held], order[held:]


def train(args: argparse.Namespace) -> dict:
    gen = seed_and_threads(args)
    start = time.perf_counter()
    x, y, classes = load_channel(args.train, args.image_size)
    if args.validation:
        vx, vy, _ = load_channel(args.validation, args.image_size, classes)
    else:
        held, kept = holdout(len(x), args)
        vx, vy, x, y = x[held], y[held], x[kept], y[kept]
    x, y, vx, vy = map(torch.from_numpy, (x, y, vx, vy))
    print(
        f"classes={','.join(classes)} train_images={len(x)} validation_images={len(vx)} load_s={time.perf_counter() - start:.2f}",
        flush=True,
    )

    net = SceneNet(len(classes), args.width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(x) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            batch = order[i : i + args.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(net(normalise(augment(x[batch], gen))), y[batch])
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        accuracy = evaluate(net, vx, vy)
        history.append(
            {"epoch": epoch, "train_loss": round(total / len(x), 5), "validation_accuracy": round(accuracy, 5)}
        )
        print(f"epoch={epoch} train_loss={total / len(x):.4f} validation_accuracy={accuracy:.4f}", flush=True)
    per_class = {}
    net.eval()
    with torch.no_grad():
        predicted = net(normalise(vx)).argmax(1)
    for index, name in enumerate(classes):
        mask = vy == index
        per_class[name] = round(float((predicted[mask] == index).float().mean()), 5) if mask.any() else None
    return {
        "net": net,
        "classes": classes,
        "history": history,
        "per_class_accuracy": per_class,
        "train_images": len(x),
        "validation_images": len(vx),
        "seconds": round(time.perf_counter() - start, 2),
    }


HYPERPARAMETERS = (
    "epochs",
    "lr",
    "batch_size",
    "weight_decay",
    "image_size",
    "width",
    "val_fraction",
    "seed",
    "threads",
)


def write_model_dir(
    args: argparse.Namespace,
    net: nn.Module,
    classes: list[str],
    *,
    output_name: str,
    preprocessing: dict,
    training: dict,
    metrics: dict,
) -> None:
    """SM_MODEL_DIR's contents (model.onnx, labels.txt, preprocessing.json, training.json) and SageMaker's
    metrics.json; `preprocessing` and `training` hold what differs between the reference models."""
    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, args.image_size, args.image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript; torch marks it deprecated in favour of dynamo.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net.eval(),
            (dummy,),
            str(model_dir / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=[output_name],
            opset_version=17,
            do_constant_folding=True,
        )
    (model_dir / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    size = [args.image_size, args.image_size]
    steps = {
        "resize": size,
        "interpolation": "bilinear",
        "color_order": "RGB",
        "layout": "NCHW",
        "scale": 1.0 / 255.0,
        "mean": MEAN,
        "std": STD,
    }
    preprocessing = {
        "format_version": FORMAT_VERSION,
        "input": {"name": "input", "shape": [1, 3, *size], "dtype": "float32"},
        "labels": "labels.txt",
        **preprocessing,
        "preprocessing": {**steps, **preprocessing.get("preprocessing", {})},
    }
    (model_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
    info = {
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "classes": classes,
        **training,
        "hyperparameters": {k: getattr(args, k) for k in HYPERPARAMETERS},
        "metrics": metrics,
    }
    (model_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.output_data_dir:
        Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_data_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def export(result: dict, args: argparse.Namespace) -> None:
    metrics = {
        "validation_accuracy": result["history"][-1]["validation_accuracy"],
        "per_class_accuracy": result["per_class_accuracy"],
        "history": result["history"],
        "train_images": result["train_images"],
        "validation_images": result["validation_images"],
        "train_seconds": result["seconds"],
    }
    write_model_dir(
        args,
        WithSoftmax(result["net"]),
        result["classes"],
        output_name="probs",
        preprocessing={"task": "classification"},
        training={"model": "SceneNet"},
        metrics=metrics,
    )


def write_failure(message: str) -> None:
    output_dir = os.environ.get("SM_OUTPUT_DIR")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(message[:1024] + "\n")


def run_script(argv: list[str] | None, parse_fn, train_fn, export_fn) -> int:
    """A script-mode entry point: bad input is a clear error and SageMaker's `failure` file, never a bare traceback."""
    try:
        args = parse_fn(argv)
        export_fn(train_fn(args), args)
    except InputProblem as exc:
        write_failure(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        write_failure(traceback.format_exc(limit=3))
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args, train, export)


if __name__ == "__main__":
    sys.exit(main())
