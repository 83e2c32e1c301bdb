"""Train the scene classifier as `edgefleet models train` does and report time and accuracy.

Runs the same job with 1 torch thread (the default) and with SM_NUM_CPUS threads, in one run,
and prints the wall/CPU ratio, the validation accuracy, and the accuracy on unseen 320x240 JPEG
demo frames through the agent's preprocessing (onnxruntime on the exported model.onnx).

    python benchmarks/models_training.py [--per-class 200] [--frames 30]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import tempfile
from pathlib import Path

import numpy as np


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def frame_accuracy(model_dir: Path, frames: int) -> dict[str, float]:
    import onnxruntime as ort
    from PIL import Image

    from edgefleet.agent.preprocess import preprocess
    from edgefleet.compiler.source import read_serving_spec
    from edgefleet.models.scenes import CLASSES, render_scene

    spec = read_serving_spec(model_dir)
    labels = (model_dir / spec.labels).read_text().split()
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    result = {}
    for label in CLASSES:
        correct = 0
        for i in range(frames):
            buf = io.BytesIO()
            render_scene(label, seed=0, index=i, stream="frames", size=(320, 240)).save(buf, "JPEG", quality=90)
            batch = preprocess(Image.open(io.BytesIO(buf.getvalue())), spec.input, spec.preprocessing)
            correct += labels[int(np.argmax(session.run(None, {spec.input.name: batch})[0]))] == label
        result[label] = correct / frames
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--frames", type=int, default=30)
    args = parser.parse_args()
    from edgefleet.models.job import TrainingJobConfig, run_training_job
    from edgefleet.models.scenes import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", per_class=args.per_class, validation_per_class=args.per_class // 4)
        runs = {}
        for threads in (1, 0):
            cpu = child_cpu_s()
            job = run_training_job(
                TrainingJobConfig(
                    data=root / "data", out=root / f"job-{threads}", hyperparameters={"threads": threads}
                ),
                stream=None,
            )
            runs[threads] = {
                "wall_s": job.seconds,
                "cpu_s": round(child_cpu_s() - cpu, 2),
                "validation_accuracy": job.metrics["validation_accuracy"],
                "per_class": job.metrics["per_class_accuracy"],
            }
        one, many = runs[1], runs[0]
        print(json.dumps(runs, indent=2))
        print(
            f"1 thread vs SM_NUM_CPUS threads: wall {many['wall_s'] / one['wall_s']:.2f}x, cpu {many['cpu_s'] / max(one['cpu_s'], 1e-9):.2f}x slower with more threads"
        )
        print(f"validation accuracy {one['validation_accuracy']:.3f} (chance {1 / 3:.3f})")
        frames = frame_accuracy(root / "job-1" / "opt" / "ml" / "model", args.frames)
        print(f"unseen 320x240 JPEG frames: {json.dumps(frames)}, mean {np.mean(list(frames.values())):.3f}")


if __name__ == "__main__":
    main()
