"""The target registry: Neo names, new boards, TargetPlatform form, raw TVM dicts, `edgefleet targets`."""

from __future__ import annotations

import json

import pytest

from edgefleet.compiler.targets import TARGETS, resolve_target
from edgefleet.errors import UnknownTargetError

NEO_NAMES = [
    "rasp3b",
    "rasp4b",
    "jetson_nano",
    "jetson_tx2",
    "jetson_xavier",
    "ml_c5",
    "ml_m5",
    "ml_c6i",
    "ml_inf1",
    "ml_inf2",
]
NEW_BOARDS = ["rasp5", "jetson_orin"]
GENERIC = ["x86_64", "aarch64", "armv7"]


def test_targets_command_lists_every_entry(cli):
    result = cli("targets", "--json")
    assert result.code == 0, result.text
    listed = json.loads(result.out)
    assert set(NEO_NAMES + NEW_BOARDS + GENERIC) <= set(listed)
    assert all(listed[n]["neo_name"] for n in NEO_NAMES) and not any(listed[n]["neo_name"] for n in NEW_BOARDS)
    assert listed["rasp4b"]["cross_cc"] == "aarch64-linux-gnu-gcc" and listed["rasp3b"]["run_mode"] == "qemu-arm"
    table = cli("targets")
    assert table.code == 0 and "jetson_orin" in table.out and "TargetPlatform" in table.out


@pytest.mark.parametrize("name", NEO_NAMES + NEW_BOARDS + GENERIC)
def test_every_cpu_and_cuda_target_is_a_valid_tvm_target(name):
    import tvm

    target = resolve_target(name.upper())  # names are case-insensitive
    assert target.name == name
    if target.device == "neuron":
        assert target.tvm_target is None and target.neuron_compiler
        return
    kind = tvm.target.Target(target.tvm_target).kind.name
    assert kind == ("cuda" if target.device == "cuda" else "llvm")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("os=linux,arch=arm64", "aarch64"),
        ("os=linux,arch=arm_eabihf", "armv7"),
        ("os=linux,arch=x86_64", "x86_64"),
        ('{"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA", "gpu-code": "sm_87"}', "jetson_orin"),
        ("os=linux,arch=arm64,accelerator=nvidia,gpu-code=sm_53", "jetson_nano"),
        ("amd64", "x86_64"),
        ("armhf", "armv7"),
    ],
)
def test_platform_form_and_aliases(spec, expected):
    assert resolve_target(spec).name == expected


def test_raw_tvm_dict_compiles_and_verifies(built_models, signing_key, tmp_path, cli):
    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    result = cli(
        "compile", built_models["small_cnn"], "--target", json.dumps(spec), "-o", tmp_path / "p.tar.gz", "--json", "-q"
    )
    assert result.code == 0, result.text
    m = json.loads(result.out)["manifest"]
    assert m["target"] == {"name": "custom", "tvm_target": spec, "arch": "x86_64", "device": "cpu"}
    assert m["verification"]["status"] == "passed"


def test_raw_tvm_dict_for_arm_picks_the_cross_compiler():
    target = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}')
    assert (target.arch, target.cross_cc, target.run_mode) == ("aarch64", "aarch64-linux-gnu-gcc", "qemu-aarch64")
    cuda = resolve_target('{"kind": "cuda", "arch": "sm_87", "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}')
    assert (cuda.device, cuda.arch, cuda.run_mode) == ("cuda", "aarch64", "gpu")


@pytest.mark.parametrize(
    "spec",
    [
        "rasp",
        "ml_c7",
        '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}',
        "[1, 2]",
        "{oops",
        "os=linux,arch=arm64,accelerator=nvidia,gpu-code=sm_99",
    ],
)
def test_bad_targets_raise_unknown_target(spec):
    with pytest.raises(UnknownTargetError) as info:
        resolve_target(spec)
    assert info.value.fix


def test_registry_names_and_aliases_do_not_clash():
    from edgefleet.compiler.targets import _ALIASES

    assert not set(_ALIASES) & set(TARGETS)
