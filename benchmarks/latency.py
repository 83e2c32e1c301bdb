"""Compiled-model latency against ONNX Runtime: ResNet-50, SqueezeNet, MobileNetV2 (issue 8).

For each model: compile with TVM's stock CPU pipeline (the "before": no schedules) and with
edgefleet's pipeline (NCHWc layout, prepacked weights, default schedules, tuning database if
one exists for the target), then time both and ONNX Runtime interleaved in one process on the
same input, with the same thread count, and print medians and ratios. Machines shared with
other work give noisy absolute numbers; the ratios come from the same rounds.

    python benchmarks/latency.py [--target ml_c6i] [--threads 1] [--runs 20] [--models resnet50,squeezenet,mobilenetv2] [--no-before]

`--models grouped,shufflenet` times the grouped-convolution test nets (AlexNet/ShuffleNet/ResNeXt
style, and a ShuffleNet-v1-like stack); every model's output is checked against ONNX Runtime's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def model_path(name: str, tmp: Path) -> Path:
    if name == "mobilenetv2":
        from edgefleet.models.mobilenetv2 import save

        return save(tmp / "mobilenetv2.onnx")
    if name == "yolov8":
        return yolov8(tmp / "yolov8.onnx")
    if name in ("grouped", "shufflenet"):
        # Grouped-convolution nets (issue 21) from the test models, exported with trained BatchNorm.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from support import torch_models

        return torch_models.export(name, tmp / f"{name}.onnx")
    # "shufflenet" is the test net above; ONNX's real ShuffleNet v1 (constant weights) is "light_shufflenet".
    return LIGHT / f"light_{name.removeprefix('light_')}.onnx"


def yolov8(path: Path, size: int = 320) -> Path:
    """tests/support/torch_models.py's YOLOv8-style detector (C2f, SPPF, DFL head), exported at size x size."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.torch_models import YoloV8, trained

    model = trained(YoloV8(), size)
    torch.onnx.export(
        model,
        (torch.rand(1, 3, size, size),),
        str(path),
        input_names=["images"],
        output_names=["out0"],
        opset_version=17,
        dynamo=False,
    )
    return path


def compile_vm(model: onnx.ModelProto, target, stock: bool):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target

    tgt = tvm_target(target)
    mod = from_onnx(model, keep_params_in_input=False)
    start = time.perf_counter()
    with tgt:
        mod = (
            relax.get_default_pipeline(tgt)
            if stock
            else _optimize_pipeline(target, 0, KernelFallbacks(lambda _m: None))
        )(mod)
    ex = tvm.compile(mod, target=tgt, relax_pipeline=None)
    compile_s = time.perf_counter() - start
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return (lambda x: vm["main"](x)), compile_s


def main() -> None:
    import tvm

    from edgefleet.compiler.bench import cpu_peak_gflops, onnx_gflop
    from edgefleet.compiler.targets import resolve_target

    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="ml_c6i")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default="resnet50,squeezenet,mobilenetv2")
    ap.add_argument("--no-before", action="store_true", help="skip the stock pipeline (slow: ~2 s per ResNet-50 run)")
    args = ap.parse_args()
    target = resolve_target(args.target)
    tvm.get_global_func("runtime.config_threadpool")(1, args.threads)
    peak = cpu_peak_gflops(args.threads)
    print(
        f"target {target.name} {target.tvm_target}; {args.threads} thread(s) for TVM and ONNX Runtime; estimated peak {peak and round(peak)} GFLOP/s"
    )
    print(
        f"{'model':<12} {'GFLOP':>6} {'ORT ms':>8} {'before ms':>10} {'x ORT':>7} {'after ms':>9} {'x ORT':>7} {'after GFLOP/s':>14} {'compile s':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = model_path(name, Path(tmp))
            model = onnx.load(str(path))
            inits = {i.name for i in model.graph.initializer}
            spec = next(i for i in model.graph.input if i.name not in inits)
            x = np.random.default_rng(0).random(
                [d.dim_value for d in spec.type.tensor_type.shape.dim], dtype=np.float32
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            runners = {"ort": lambda: sess.run(None, {spec.name: x})}
            xt = tvm.runtime.tensor(x)
            after, compile_s = compile_vm(model, target, stock=False)
            runners["after"] = lambda: after(xt)
            if not args.no_before:
                before, _ = compile_vm(model, target, stock=True)
                runners["before"] = lambda: before(xt)
            want = sess.run(None, {spec.name: x})[0]
            got = after(xt)
            got = got if isinstance(got, tvm.runtime.Tensor) else got[0]
            np.testing.assert_allclose(
                got.numpy(), want, rtol=1e-3, atol=1e-3, err_msg=f"{name}: compiled output differs from ONNX Runtime's"
            )
            times = {k: [] for k in runners}
            for run in runners.values():
                run()
            # The stock build is ~100x slower: give it fewer rounds, interleaved all the same.
            for i in range(args.runs):
                for k, run in runners.items():
                    if k == "before" and i % 5:
                        continue
                    start = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            gflop = onnx_gflop(path) or float("nan")
            before_ms = med.get("before", float("nan"))
            print(
                f"{name:<12} {gflop:6.2f} {med['ort']:8.2f} {before_ms:10.1f} {before_ms / med['ort']:7.1f} {med['after']:9.2f} "
                f"{med['after'] / med['ort']:7.2f} {gflop / med['after'] * 1e3:14.1f} {compile_s:10.1f}"
            )


if __name__ == "__main__":
    main()
