"""Small detector and classifier topologies users export with torch.onnx.export, written in plain torch.

The shapes of their tensors are read inside `forward` (x.shape, x.size(0)), so the TorchScript
exporter writes Shape -> Gather -> Concat -> Reshape chains, as exports of YOLOv8, YOLOv5 and SSD
do (with a static input torch folds some itself: those left are C2f's chunk and the grids).
Weights are random; `trained` runs a few forward passes in train mode so BatchNorm holds real
statistics and the outputs depend on the input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv(c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = conv(c, c), conv(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's split / bottlenecks / concat block."""

    def __init__(self, c1: int, c2: int, n: int = 1) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = conv(c1, 2 * self.c, 1)
        self.cv2 = conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = conv(c1, c1 // 2, 1), conv(c1 * 2, c2, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


def _grid(h: int, w: int, like: torch.Tensor):
    """Cell coordinates computed from the feature map's run-time size (arange over x.shape: Range in ONNX)."""
    ys = torch.arange(h, dtype=like.dtype) + 0.5
    xs = torch.arange(w, dtype=like.dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx, gy


class YoloV8(nn.Module):
    """Backbone with C2f and SPPF, two-level anchor-free head with a DFL box decoder."""

    reg_max, nc = 8, 3

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, 3, 2), conv(8, 16, 3, 2), C2f(16, 16))
        self.p4 = nn.Sequential(conv(16, 32, 3, 2), C2f(32, 32), SPPF(32, 32))
        self.box = nn.ModuleList(nn.Sequential(conv(c, 16), nn.Conv2d(16, 4 * self.reg_max, 1)) for c in (16, 32))
        self.cls = nn.ModuleList(nn.Sequential(conv(c, 16), nn.Conv2d(16, self.nc, 1)) for c in (16, 32))
        self.dfl = nn.Conv2d(self.reg_max, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(self.reg_max, dtype=torch.float32).view(1, self.reg_max, 1, 1)
        self.dfl.requires_grad_(False)

    def forward(self, x):
        p3 = self.stem(x)
        feats = [p3, self.p4(p3)]
        outs, anchors, strides = [], [], []
        for i, f in enumerate(feats):
            b, _, h, w = f.shape
            outs.append(torch.cat([self.box[i](f), self.cls[i](f)], 1).view(b, 4 * self.reg_max + self.nc, -1))
            gx, gy = _grid(h, w, f)
            anchors.append(torch.stack([gx, gy], -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), x.shape[2] / h, dtype=f.dtype))
        y = torch.cat(outs, 2)
        box, cls = y.split([4 * self.reg_max, self.nc], 1)
        b, _, a = box.shape
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        anchor = torch.cat(anchors).transpose(0, 1).unsqueeze(0)
        lt, rb = dist.chunk(2, 1)
        xy = (anchor + (rb - lt) / 2) * torch.cat(strides).transpose(0, 1)
        wh = (lt + rb) * torch.cat(strides).transpose(0, 1)
        return torch.cat([xy, wh, cls.sigmoid()], 1)


class Attention(nn.Module):
    """YOLO11's PSA attention: qkv 1x1 conv, view(B, heads, -1, N) by x.shape, split, matmul, softmax."""

    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.key_dim, self.head_dim = heads, c // heads // 2, c // heads
        self.qkv = conv(c, c + 2 * heads * self.key_dim, 1)
        self.pe = conv(c, c, 3, g=c)
        self.proj = conv(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x).view(b, self.heads, self.key_dim * 2 + self.head_dim, n)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k * self.key_dim**-0.5).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)


class Yolo11(YoloV8):
    """YOLOv8's head on a backbone with a C2PSA-style attention block after SPPF."""

    def __init__(self) -> None:
        super().__init__()
        self.p4 = nn.Sequential(conv(16, 32, 3, 2), C2f(32, 32), SPPF(32, 32), Attention(32))


class YoloV5(nn.Module):
    """Anchor-based head with objectness: view(bs, na, no, ny, nx) -> permute -> grid decode."""

    nc, na = 2, 3

    def __init__(self) -> None:
        super().__init__()
        self.no = self.nc + 5
        self.body = nn.Sequential(conv(3, 8, 3, 2), conv(8, 16, 3, 2), C2f(16, 16))
        self.down = nn.Sequential(conv(16, 32, 3, 2), SPPF(32, 32))
        self.heads = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (16, 32))
        anchors = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]]]
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))

    def forward(self, x):
        p3 = self.body(x)
        out = []
        for i, f in enumerate([p3, self.down(p3)]):
            bs, _, ny, nx = f.shape
            p = self.heads[i](f).view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            stride = x.shape[2] / ny
            gx, gy = _grid(ny, nx, f)
            grid = torch.stack([gx, gy], -1).view(1, 1, ny, nx, 2) - 1.0
            xy = (p[..., :2] * 2 + grid) * stride
            wh = (p[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, self.na, 1, 1, 2)
            out.append(torch.cat([xy, wh, p[..., 4:]], -1).view(bs, -1, self.no))
        return torch.cat(out, 1)


class SSD(nn.Module):
    """Several feature maps; loc/conf heads permuted to NHWC and reshaped by x.size(0)."""

    nc, boxes = 4, 2

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(conv(3, 16, 3, 2), conv(16, 16, 3, 2)),
                conv(16, 24, 3, 2),
                conv(24, 24, 3, 2),
            ]
        )
        self.loc = nn.ModuleList(nn.Conv2d(c, self.boxes * 4, 3, padding=1) for c in (16, 24, 24))
        self.conf = nn.ModuleList(nn.Conv2d(c, self.boxes * self.nc, 3, padding=1) for c in (16, 24, 24))

    def forward(self, x):
        locs, confs = [], []
        for stage, loc, conf in zip(self.stages, self.loc, self.conf):
            x = stage(x)
            locs.append(loc(x).permute(0, 2, 3, 1).reshape(x.size(0), -1, 4))
            confs.append(conf(x).permute(0, 2, 3, 1).reshape(x.size(0), -1, self.nc))
        return torch.cat(locs, 1), torch.cat(confs, 1).softmax(-1)


class Classifier(nn.Module):
    """ResNet basic blocks and a MobileNet inverted residual (depthwise); flattened by x.size(0)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv(3, 16, 3, 2)
        self.res = nn.Sequential(conv(16, 16), nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.inverted = nn.Sequential(
            conv(16, 48, 1), conv(48, 48, 3, 2, g=48), nn.Conv2d(48, 24, 1, bias=False), nn.BatchNorm2d(24)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.pool(self.inverted(x))
        return self.fc(x.view(x.size(0), -1))


MODELS = {
    "yolov8": (YoloV8, 96),
    "yolo11": (Yolo11, 96),
    "yolov5": (YoloV5, 96),
    "ssd": (SSD, 96),
    "classifier": (Classifier, 64),
}


def trained(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Random weights, BatchNorm statistics from a few train-mode passes, then eval mode."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, size, size))
    return model.eval()


def export(name: str, path: Path, *, dynamic_batch: bool = False, opset: int = 17, fold: bool = False) -> Path:
    """Export MODELS[name] with torch.onnx.export's TorchScript exporter (what YOLO/SSD export scripts call).

    fold=False keeps the shape arithmetic torch would otherwise fold for a static export.
    """
    cls, size = (MODELS | KERNEL_CASES)[name]
    model = trained(cls(), size)
    example = torch.rand(1, 3, size, size)
    with torch.no_grad():
        outputs = model(example)
    count = len(outputs) if isinstance(outputs, tuple) else 1
    output_names = [f"out{i}" for i in range(count)]
    axes = {n: {0: "batch"} for n in ["images", *output_names]} if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=output_names,
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
        do_constant_folding=fold,
    )
    return path


class GroupedConvs(nn.Module):
    """AlexNet's two-group convolution, ShuffleNet's grouped 1x1 with a channel shuffle (view/transpose
    by x.shape), ResNeXt's 4-group 3x3 bottleneck and a depthwise convolution with multiplier 2.
    16 channels per group, as in the real networks, so the CPU pipeline's NCHW16c blocking applies."""

    def __init__(self) -> None:
        super().__init__()
        self.alex = nn.Sequential(
            nn.Conv2d(3, 32, 5, 2, 2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1, 1, groups=2),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.shuffle_in = nn.Sequential(nn.Conv2d(64, 64, 1, groups=4, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.resnext = nn.Sequential(
            nn.Conv2d(64, 64, 3, 1, 1, groups=4, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 1, bias=False),
            nn.BatchNorm2d(64),
        )
        self.multiplier = nn.Sequential(
            nn.Conv2d(64, 128, 3, 2, 1, groups=64, bias=False), nn.BatchNorm2d(128), nn.ReLU()
        )
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.alex(x)
        y = self.shuffle_in(x)
        b, c, h, w = y.shape
        y = y.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = torch.relu(x + self.resnext(y))
        x = self.multiplier(x).mean((2, 3))
        return self.fc(x)


MODELS["grouped"] = (GroupedConvs, 64)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1's unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1, residual."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        mid = c // 4
        self.groups = groups
        self.reduce = nn.Sequential(nn.Conv2d(c, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.reduce(x)
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return torch.relu(x + self.expand(self.dw(y)))


class ShuffleNetLike(nn.Module):
    """A ShuffleNet-v1-like stack (groups=4, 256/512 channels: 16 bottleneck channels per group so
    NCHW16c blocking applies), grouped 1x1s and 3x3s carrying most of the work."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 256, 3, 4, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU())
        self.stage1 = nn.Sequential(*(ShuffleUnit(256, 4) for _ in range(3)))
        self.down = nn.Sequential(nn.Conv2d(256, 512, 3, 2, 1, groups=4, bias=False), nn.BatchNorm2d(512), nn.ReLU())
        self.stage2 = nn.Sequential(*(ShuffleUnit(512, 4) for _ in range(3)))
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


MODELS["shufflenet"] = (ShuffleNetLike, 128)


class LogSumExpPool(nn.Module):
    """Log-sum-exp pooling over channels (a soft max across feature maps) on flattened positions,
    after a blocked backbone. dlight's CPU GEMV rule asserts on that reduction's kernel in TVM 0.27."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, 16, 3, 2), conv(16, 32, 3, 2))

    def forward(self, x):
        return torch.logsumexp(self.body(x).flatten(2), dim=1, keepdim=True)


# Not a topology users export: a model that makes one kernel fall back (test_compile_kernel_fallbacks).
KERNEL_CASES = {"logsumexp_pool": (LogSumExpPool, 64)}
