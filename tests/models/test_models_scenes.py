"""Synthetic scenes: deterministic by seed, the documented dataset layout, demo frames the agent decodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgefleet.errors import UsageError
from edgefleet.models.scenes import CLASSES, render_scene, write_dataset, write_frames


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_scenes_are_deterministic_per_seed_index_and_stream():
    a = render_scene("person", seed=4, index=2)
    assert a.mode == "RGB" and a.size == (96, 72)
    assert np.array_equal(_pixels(a), _pixels(render_scene("person", seed=4, index=2)))
    for other in (dict(seed=5, index=2), dict(seed=4, index=3), dict(seed=4, index=2, stream="validation")):
        assert np.abs(_pixels(a) - _pixels(render_scene("person", **other))).mean() > 5, other


def test_the_object_is_what_differs_between_classes():
    # Same seed and index: scenes differ, and vary in brightness (lighting is part of the scene).
    means = [_pixels(render_scene(label, seed=0, index=i)).mean() for label in CLASSES for i in range(20)]
    assert np.std(means) > 10
    person, vehicle = _pixels(render_scene("person", index=1)), _pixels(render_scene("vehicle", index=1))
    assert np.abs(person - vehicle).mean() > 5


def test_render_refuses_unknown_class_and_silly_sizes():
    with pytest.raises(UsageError, match="unknown scene class 'dog'"):
        render_scene("dog")
    with pytest.raises(UsageError, match="outside 16..4096"):
        render_scene("empty", size=(8, 8))


def test_write_dataset_layout_and_metadata(tmp_path):
    out = tmp_path / "ds"
    meta = write_dataset(out, per_class=3, validation_per_class=2, seed=7, size=(48, 36))
    assert json.loads((out / "dataset.json").read_text()) == meta
    assert meta["format_version"] == 2 and meta["classes"] == list(CLASSES) and meta["size"] == [48, 36]
    for split, n in (("train", 3), ("validation", 2)):
        for label in CLASSES:
            files = sorted((out / split / label).iterdir())
            assert [f.name for f in files] == [f"{label}-{i:05d}.png" for i in range(n)]
            assert Image.open(files[0]).size == (48, 36)
    # The same seed gives the same image as render_scene, whatever the count.
    assert np.array_equal(
        _pixels(Image.open(out / "train" / "vehicle" / "vehicle-00002.png")),
        _pixels(render_scene("vehicle", seed=7, index=2, size=(48, 36))),
    )


def test_write_dataset_never_writes_into_a_used_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="not an empty directory"):
        write_dataset(tmp_path / "ds", per_class=1)
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["mine.txt"]


def test_frames_for_demo_agents_decode_in_the_agent(tmp_path):
    from edgefleet.agent.preprocess import decode_image

    paths = write_frames(tmp_path / "frames", "vehicle", 2, seed=1)
    assert [p.name for p in paths] == ["vehicle-00000.jpg", "vehicle-00001.jpg"]
    image = decode_image(paths[0].read_bytes())
    assert image.format == "JPEG" and image.size == (320, 240)
    with pytest.raises(UsageError, match="already holds 2 of these frames"):
        write_frames(tmp_path / "frames", "vehicle", 2, seed=1)
    more = write_frames(tmp_path / "frames", "vehicle", 1, seed=1, start=2, fmt="png", size=(160, 120))
    assert more[0].name == "vehicle-00002.png" and Image.open(more[0]).size == (160, 120)


def test_cli_dataset_and_frames(tmp_path, cli):
    result = cli(
        "models", "dataset", "--out", tmp_path / "ds", "--per-class", 2, "--validation-per-class", 1, "--size", "64x48"
    )
    assert result.code == 0, result.err
    assert (
        len(list((tmp_path / "ds" / "train").rglob("*.png"))) == 6
        and len(list((tmp_path / "ds" / "validation").rglob("*.png"))) == 3
    )
    result = cli("models", "frames", "--label", "person", "--count", 3, "--out", tmp_path / "fr")
    assert result.code == 0 and sorted(p.name for p in (tmp_path / "fr").iterdir()) == [
        f"person-{i:05d}.jpg" for i in range(3)
    ]
    result = cli("models", "frames", "--label", "person", "--count", 1, "--out", tmp_path / "fr")
    assert result.code == 2 and "error:" in result.err and "--start" in result.err
    result = cli("models", "dataset", "--out", tmp_path / "ds2", "--size", "big")
    assert result.code == 2 and "WxH" in result.err


def test_scene_boxes_mark_the_drawn_object_without_changing_the_image():
    from edgefleet.models.scenes import render_scene_boxes

    shapes = {"person": [], "vehicle": []}
    for label in CLASSES:
        for i in range(20):
            scene = render_scene_boxes(label, seed=2, index=i, size=(320, 240))
            assert np.array_equal(_pixels(scene.image), _pixels(render_scene(label, seed=2, index=i, size=(320, 240))))
            if label == "empty":
                assert scene.boxes == ()
                continue
            (box,) = scene.boxes
            x1, y1, x2, y2 = box.box_px
            assert box.label == label and 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            assert box.box == pytest.approx((x1 / 320, y1 / 240, x2 / 320, y2 / 240))
            # The drawing is relative to the frame: a smaller frame has the same box, scaled.
            small = render_scene_boxes(label, seed=2, index=i, size=(160, 120)).boxes[0]
            assert np.allclose(small.box, box.box, atol=0.03), (small.box, box.box)
            shapes[label].append((x2 - x1) / (y2 - y1))
    # People stand, vehicles lie: the boxes have the shapes of what is drawn.
    assert max(shapes["person"]) < 1.0 < min(shapes["vehicle"]), shapes


def test_write_dataset_records_every_images_boxes(tmp_path):
    from edgefleet.models.scenes import render_scene_boxes

    out = tmp_path / "ds"
    write_dataset(out, per_class=2, validation_per_class=1, seed=7, size=(48, 36))
    for split, n in (("train", 2), ("validation", 1)):
        recorded = json.loads((out / split / "boxes.json").read_text())
        assert recorded["format_version"] == 2 and recorded["size"] == [48, 36]
        assert sorted(recorded["images"]) == sorted(
            f"{label}/{label}-{i:05d}.png" for label in CLASSES for i in range(n)
        )
        scene = render_scene_boxes("vehicle", seed=7, index=0, stream=split, size=(48, 36))
        assert recorded["images"]["vehicle/vehicle-00000.png"] == [b.as_json() for b in scene.boxes]
        assert recorded["images"]["empty/empty-00000.png"] == []
