"""SageMaker script-mode training entry point for the camera scene detector.

The detector's counterpart of train.py, with the same contract (read train.py's docstring):
hyperparameters as flags over SM_HPS, SM_CHANNEL_TRAIN / SM_CHANNEL_VALIDATION, SM_MODEL_DIR,
SM_OUTPUT_DATA_DIR, SM_OUTPUT_DIR's failure file, exit code 2 for bad input. It imports train.py
from its own folder, so upload the folder (`source_dir="models"`), not the file alone.

A channel is an ImageFolder plus `boxes.json` (what models/scenes.py writes): {"images":
{"<class>/<file>": [{"label": ..., "box_px": [x1, y1, x2, y2]}, ...]}}. The detector's classes are
the labels found in the boxes; images without boxes (the "empty" scenes) teach it where nothing is.

The model: a small CNN (stride 8, dilated convolutions for a receptive field that covers a
vehicle) with an anchor-free head, one prediction per grid cell. The exported graph decodes its
own boxes, so model.onnx's output "output0" is [1, 4+nc, N] (cx, cy, w, h in input pixels, then
one sigmoid score per class): the layout of Ultralytics' YOLOv8 ONNX exports, which
`edgefleet compile --task detection --head yolo` reads. Frames are letterboxed (aspect kept,
grey 114 padding) as the agent does for that head.

Writes into SM_MODEL_DIR: model.onnx, labels.txt, preprocessing.json (task detection, letterbox)
and training.json (hyperparameters, classes, metrics). Logs `epoch=N train_loss=X
validation_box_precision=Y validation_box_recall=Z` lines for SageMaker metric_definitions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from train import InputProblem, holdout, normalise, run_script, script_args, seed_and_threads, write_model_dir

STRIDE = 8
PAD_VALUE = 114  # the letterbox grey, as the agent pads for the yolo head
# Evaluation: a prediction counts when its score passes this and its box overlaps a drawn
# object of its class by IoU >= MATCH_IOU.
EVAL_SCORE = 0.5
MATCH_IOU = 0.5


class SceneDetector(nn.Module):
    """Conv-BN-ReLU blocks down to stride 8, two dilated blocks, a 1x1 head: 4 box + nc class
    channels per cell. `forward` returns the raw head; `decode` turns it into boxes."""

    def __init__(self, classes: int, size: int, width: int = 16) -> None:
        super().__init__()
        w = width
        # (in, out, stride, dilation)
        plan = [
            (3, w, 2, 1),
            (w, 2 * w, 2, 1),
            (2 * w, 2 * w, 1, 1),
            (2 * w, 4 * w, 2, 1),
            (4 * w, 4 * w, 1, 1),
            (4 * w, 4 * w, 1, 2),
            (4 * w, 4 * w, 1, 4),
        ]
        layers: list[nn.Module] = []
        for cin, cout, stride, dilation in plan:
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(4 * w, 4 + classes, 1)
        # Start every class score near 0.01, as detectors usually do: most cells hold nothing.
        nn.init.constant_(self.head.bias[4:], -math.log(99.0))
        cells = size // STRIDE
        ys, xs = torch.meshgrid(
            torch.arange(cells, dtype=torch.float32), torch.arange(cells, dtype=torch.float32), indexing="ij"
        )
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)]).unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(2)  # [B, 4+nc, N]

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, 4+nc, N] raw -> cx, cy within two cells of the cell's centre, w, h, sigmoid scores."""
        xy = (self.grid + 0.5 + 2.0 * torch.tanh(raw[:, :2])) * STRIDE
        wh = torch.exp(raw[:, 2:4].clamp(-4.0, 4.0)) * (4 * STRIDE)
        return torch.cat([xy, wh, torch.sigmoid(raw[:, 4:])], dim=1)


class Exported(nn.Module):
    """What is exported: the decoded [1, 4+nc, N] output."""

    def __init__(self, net: SceneDetector) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.decode(self.net(x))


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    return script_args(
        "Train the edgefleet camera scene detector (SageMaker script mode).",
        {"epochs": 20, "image-size": 96},
        lambda a: [
            (
                32 <= a.image_size <= 512 and a.image_size % STRIDE == 0,
                f"image-size must be a multiple of {STRIDE} in 32..512",
            ),
            (1 <= a.width <= 128, "width must be 1..128"),
        ],
        argv,
        env,
    )


def letterbox(path: Path, size: int) -> tuple[np.ndarray, float, int, int]:
    """File -> float32 size x size x 3 in [0, 1], aspect kept and centred on grey, resized as the
    agent resizes (bilinear on 8-bit RGB); returns the scale and the left, top padding."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputProblem(f"cannot read image {path}: {exc}") from None
    scale = min(size / image.width, size / image.height)
    new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    canvas.paste(
        image if image.size == (new_w, new_h) else image.resize((new_w, new_h), Image.Resampling.BILINEAR), (left, top)
    )
    return np.asarray(canvas, dtype=np.float32) / 255.0, scale, left, top


def _read_boxes(folder: Path) -> dict[str, list]:
    path = folder / "boxes.json"
    if not path.is_file():
        raise InputProblem(
            f"channel {folder} has no boxes.json; a detector needs the objects' boxes (write the data with `edgefleet models dataset`)"
        )
    try:
        images = json.loads(path.read_text())["images"]
        for name, boxes in images.items():
            for box in boxes:
                if not isinstance(box["label"], str) or len(box["box_px"]) != 4:
                    raise ValueError(f"{name}: a box needs a label and box_px [x1, y1, x2, y2]")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputProblem(f"{path} is not a boxes file: {exc}") from None
    return images


def load_channel(
    root: str, size: int, classes: list[str] | None = None
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """A channel -> (N x 3 x S x S letterboxed pixels, per image [M, 5] boxes (x1, y1, x2, y2 in input pixels, class), classes)."""
    folder = Path(root)
    if not folder.is_dir():
        raise InputProblem(f"channel folder {root} does not exist")
    annotations = _read_boxes(folder)
    found = sorted({box["label"] for boxes in annotations.values() for box in boxes})
    if classes is None:
        classes = found
        if not classes:
            raise InputProblem(
                f"{folder / 'boxes.json'} holds no boxes; a detector needs at least one object to learn from"
            )
    elif not set(found) <= set(classes):
        raise InputProblem(f"{root} has labels {found} that the train channel has not ({classes})")
    images, targets = [], []
    for name in sorted(annotations):
        pixels, scale, left, top = letterbox(folder / name, size)
        rows = [
            [
                box["box_px"][0] * scale + left,
                box["box_px"][1] * scale + top,
                box["box_px"][2] * scale + left,
                box["box_px"][3] * scale + top,
                classes.index(box["label"]),
            ]
            for box in annotations[name]
        ]
        images.append(pixels)
        targets.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    if not images:
        raise InputProblem(f"{folder / 'boxes.json'} lists no images")
    return np.stack(images).transpose(0, 3, 1, 2).copy(), targets, classes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU of [..., 4] x1, y1, x2, y2 boxes, and their union (which GIoU needs too)."""
    inter = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter
    return inter / union.clamp(min=1e-6), union


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iou, union = box_iou(a, b)
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).prod(-1).clamp(min=1e-6)
    return iou - (hull - union) / hull


def xyxy(decoded: torch.Tensor) -> torch.Tensor:
    """[B, 4+nc, N] decoded -> [B, N, 4] corner boxes."""
    cx, cy, w, h = decoded[:, 0], decoded[:, 1], decoded[:, 2], decoded[:, 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def assign(
    targets: list[np.ndarray], grid: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which cells answer for which object: the cell holding its centre and the neighbours (within
    1.5 cells) whose centres lie inside it; a cell claimed twice goes to the smaller object.
    Returns per image and cell: the class target [B, N, nc], the box [B, N, 4] and a positive mask [B, N]."""
    centres = (grid[0].T + 0.5) * STRIDE  # [N, 2]
    n = centres.shape[0]
    cls = torch.zeros(len(targets), n, classes)
    boxes = torch.zeros(len(targets), n, 4)
    area = torch.full((len(targets), n), float("inf"))
    for i, rows in enumerate(targets):
        for x1, y1, x2, y2, c in rows.tolist():
            mid = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2])
            near = ((centres - mid).abs() <= 1.5 * STRIDE).all(1)
            inside = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)
            owner = near & inside
            owner[int(((centres - mid) ** 2).sum(1).argmin())] = True
            claim = owner & (area[i] > (x2 - x1) * (y2 - y1))
            area[i][claim] = (x2 - x1) * (y2 - y1)
            boxes[i][claim] = torch.tensor([x1, y1, x2, y2])
            cls[i][claim] = 0.0
            cls[i][claim, int(c)] = 1.0
    return cls, boxes, torch.isfinite(area)


def augment(
    pixels: torch.Tensor, targets: list[np.ndarray], gen: torch.Generator
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Horizontal flips (boxes flipped with them) and brightness jitter, as train.py augments."""
    n, size = pixels.shape[0], pixels.shape[3]
    flip = torch.rand(n, generator=gen) < 0.5
    pixels = torch.where(flip.view(n, 1, 1, 1), pixels.flip(3), pixels)
    flipped = []
    for rows, f in zip(targets, flip.tolist()):
        rows = rows.copy()
        if f:
            rows[:, [0, 2]] = size - rows[:, [2, 0]]
        flipped.append(rows)
    gain = 0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    return (pixels * gain).clamp(0, 1), flipped


def loss_fn(net: SceneDetector, raw: torch.Tensor, targets: list[np.ndarray]) -> torch.Tensor:
    """Class BCE over every cell; GIoU and L1 (over the input side) on the positive cells' boxes."""
    cls, boxes, positive = assign(targets, net.grid, raw.shape[1] - 4)
    count = max(1.0, float(positive.sum()))
    class_loss = (
        nn.functional.binary_cross_entropy_with_logits(raw[:, 4:].transpose(1, 2), cls, reduction="sum") / count
    )
    if not positive.any():
        return class_loss
    predicted = xyxy(net.decode(raw))[positive]
    size = float(net.grid.shape[2] ** 0.5 * STRIDE)
    box_loss = (1.0 - giou(predicted, boxes[positive])).sum() / count + (predicted - boxes[positive]).abs().sum() / (
        size * count
    )
    return class_loss + 2.0 * box_loss


def evaluate(net: SceneDetector, x: torch.Tensor, targets: list[np.ndarray]) -> tuple[float, float]:
    """(precision, recall) of each image's best prediction scoring >= EVAL_SCORE against its
    boxes at IoU >= MATCH_IOU, same class. The scenes hold at most one object, so the best
    prediction per image stands in for NMS."""
    net.eval()
    with torch.no_grad():
        decoded = torch.cat([net.decode(net(normalise(x[i : i + 256]))) for i in range(0, len(x), 256)])
    boxes = xyxy(decoded)
    scores, classes = decoded[:, 4:].max(1)  # [B, N]
    best = scores.argmax(1)
    predicted = hits = 0
    objects = sum(len(t) for t in targets)
    for i, rows in enumerate(targets):
        if float(scores[i, best[i]]) < EVAL_SCORE:
            continue
        predicted += 1
        box, c = boxes[i, best[i]], int(classes[i, best[i]])
        truth = torch.from_numpy(rows)
        if len(truth) and bool(
            ((box_iou(box.expand(len(truth), 4), truth[:, :4])[0] >= MATCH_IOU) & (truth[:, 4] == c)).any()
        ):
            hits += 1
    return hits / max(predicted, 1), hits / max(objects, 1)


def train(args: argparse.Namespace) -> dict:
    gen = seed_and_threads(args)
    start = time.perf_counter()
    x, targets, classes = load_channel(args.train, args.image_size)
    if args.validation:
        vx, vtargets, _ = load_channel(args.validation, args.image_size, classes)
    else:
        held, kept = holdout(len(x), args)
        vx, vtargets = x[held], [targets[i] for i in held]
        x, targets = x[kept], [targets[i] for i in kept]
    x, vx = torch.from_numpy(x), torch.from_numpy(vx)
    print(
        f"classes={','.join(classes)} train_images={len(x)} validation_images={len(vx)} load_s={time.perf_counter() - start:.2f}",
        flush=True,
    )

    net = SceneDetector(len(classes), args.image_size, args.width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(x) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=steps)
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            batch = order[i : i + args.batch_size]
            pixels, boxes = augment(x[batch], [targets[j] for j in batch.tolist()], gen)
            optimiser.zero_grad()
            loss = loss_fn(net, net(normalise(pixels)), boxes)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        precision, recall = evaluate(net, vx, vtargets)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(total / len(x), 5),
                "validation_box_precision": round(precision, 5),
                "validation_box_recall": round(recall, 5),
            }
        )
        print(
            f"epoch={epoch} train_loss={total / len(x):.4f} validation_box_precision={precision:.4f} validation_box_recall={recall:.4f}",
            flush=True,
        )
    return {
        "net": net,
        "classes": classes,
        "history": history,
        "train_images": len(x),
        "validation_images": len(vx),
        "seconds": round(time.perf_counter() - start, 2),
    }


def export(result: dict, args: argparse.Namespace) -> None:
    last = result["history"][-1]
    metrics = {
        "validation_box_precision": last["validation_box_precision"],
        "validation_box_recall": last["validation_box_recall"],
        "history": result["history"],
        "train_images": result["train_images"],
        "validation_images": result["validation_images"],
        "train_seconds": result["seconds"],
    }
    write_model_dir(
        args,
        Exported(result["net"]),
        result["classes"],
        output_name="output0",
        preprocessing={"task": "detection", "preprocessing": {"resize_mode": "letterbox", "pad_value": PAD_VALUE}},
        training={
            "model": "SceneDetector",
            "output_layout": "[1, 4+nc, N]: cx, cy, w, h in input pixels, nc sigmoid scores",
        },
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args, train, export)


if __name__ == "__main__":
    sys.exit(main())
