"""Neo's CompilerOptions on a TargetPlatform: every key Neo documents is honoured (gpu-code,
cuda-ver, mcpu, mattr) or refused by name; none is ignored."""

from __future__ import annotations

import json

import pytest

from edgefleet.compiler.targets import resolve_target
from edgefleet.errors import UnknownTargetError

NVIDIA = {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"}


def platform(options, base=NVIDIA, shape: str = "inside") -> str:
    """The three places Neo users put CompilerOptions: inside the platform, an OutputConfig, beside Os/Arch."""
    if shape == "inside":
        return json.dumps({**base, "CompilerOptions": options})
    if shape == "output_config":
        return json.dumps({"TargetPlatform": base, "CompilerOptions": json.dumps(options)})
    return json.dumps({**base, **options})


@pytest.mark.parametrize("shape", ["inside", "output_config", "flat"])
@pytest.mark.parametrize(
    ("options", "target", "arch"),
    [
        ({"gpu-code": "sm_53"}, "jetson_nano", "sm_53"),
        ({"gpu_code": "SM_62", "cuda-ver": "10.0"}, "jetson_tx2", "sm_62"),
        ({"gpu-code": "sm_72", "cuda-ver": "10.2"}, "jetson_xavier", "sm_72"),
        ({"gpu-code": "sm_87", "cuda-ver": "11.4"}, "jetson_orin", "sm_87"),
    ],
)
def test_gpu_code_picks_the_board_and_cuda_ver_is_checked(options, target, arch, shape):
    resolved = resolve_target(platform(options, shape=shape))
    assert (resolved.name, resolved.tvm_target["arch"], resolved.device) == (target, arch, "cuda")


@pytest.mark.parametrize(
    ("spec", "name", "mcpu", "mattr"),
    [
        (platform({"mcpu": "cortex-a72"}, {"Os": "LINUX", "Arch": "ARM64"}), "aarch64", "cortex-a72", ["+neon"]),
        (platform({"mattr": ["+neon"]}, {"Os": "LINUX", "Arch": "ARM_EABIHF"}), "armv7", "cortex-a7", ["+neon"]),
        # Neo's own examples quote CompilerOptions the Python way.
        (
            json.dumps({"TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}, "CompilerOptions": "{'mcpu': 'haswell'}"}),
            "x86_64",
            "haswell",
            None,
        ),
        ("os=linux,arch=arm64,mcpu=cortex-a76,mattr=+neon+dotprod", "aarch64", "cortex-a76", ["+neon", "+dotprod"]),
        ("os=linux,arch=arm_eabihf,mattr=+neon+fp-armv8", "armv7", "cortex-a7", ["+neon", "+fp-armv8"]),
    ],
)
def test_mcpu_and_mattr_change_the_tvm_target(spec, name, mcpu, mattr):
    resolved = resolve_target(spec)
    assert resolved.name == name and resolved.device == "cpu"
    assert resolved.tvm_target["mcpu"] == mcpu
    assert resolved.tvm_target.get("mattr") == mattr
    assert "CompilerOptions" in resolved.description


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (platform({}), "needs CompilerOptions gpu-code"),
        (platform({"gpu-code": "sm_99"}), "'sm_99' is not a known Jetson architecture"),
        (platform({"gpu-code": "sm_87", "cuda-ver": "10.2"}), "sm_87 needs CUDA 11.4 or newer"),
        (platform({"gpu-code": "sm_53", "cuda-ver": "ten"}), "cuda-ver 'ten' is not a version"),
        (platform({"gpu-code": "sm_53", "trt-ver": "7.1.3"}), "'trt-ver' is not supported: edgefleet compiles"),
        (platform({"gpu-code": "sm_53", "mcpu": "cortex-a57"}), "'mcpu' is a CPU option"),
        (platform({"DTYPE": "float32"}, {"Os": "LINUX", "Arch": "X86_64"}), "'dtype' is not supported"),
        (platform({"ANDROID_PLATFORM": 28}, {"Os": "ANDROID", "Arch": "ARM64"}), "'android-platform' is not supported"),
        (platform({"class_labels": "l.txt"}, {"Os": "LINUX", "Arch": "ARM64"}), "'class-labels' is not supported"),
        (platform({"precision_mode": "FP16"}, {"Os": "LINUX", "Arch": "ARM64"}), "'precision-mode' is not supported"),
        (platform({"signature_def_key": "x"}, {"Os": "LINUX", "Arch": "ARM64"}), "'signature-def-key' is not"),
        (platform({"output_names": ["y"]}, {"Os": "LINUX", "Arch": "ARM64"}), "'output-names' is not supported"),
        (platform({"frobnicate": 1}, {"Os": "LINUX", "Arch": "ARM64"}), "'frobnicate' is not an option Neo documents"),
        ("os=linux,arch=arm64,gpu-code=sm_53", "'gpu-code' applies to Accelerator NVIDIA only"),
        ("os=linux,arch=x86_64,cuda-ver=11.4", "'cuda-ver' applies to Accelerator NVIDIA only"),
        ("os=linux,arch=arm64,mcpu=cortex-z9", "mcpu 'cortex-z9' is not a CPU LLVM knows for aarch64"),
        ("os=linux,arch=arm64,mattr=+avx512f", "mattr +avx512f is not a feature LLVM can set"),
        (platform({"mattr": "neon"}, {"Os": "LINUX", "Arch": "ARM64"}), "is not a list of +feature"),
        (json.dumps({"Os": "LINUX", "Arch": "X86_64", "CompilerOptions": "--verbose 1"}), "must be an object"),
    ],
)
def test_options_edgefleet_cannot_honour_are_refused_by_name(spec, message):
    with pytest.raises(UnknownTargetError) as info:
        resolve_target(spec)
    assert message in info.value.cause and info.value.fix


def test_compile_honours_mcpu_from_a_target_platform(built_models, signing_key, tmp_path, cli):
    spec = json.dumps({"TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}, "CompilerOptions": {"mcpu": "haswell"}})
    result = cli("compile", built_models["small_cnn"], "--target", spec, "-o", tmp_path / "p.tar.gz", "--json", "-q")
    assert result.code == 0, result.text
    m = json.loads(result.out)["manifest"]
    assert m["target"]["name"] == "x86_64" and m["target"]["tvm_target"]["mcpu"] == "haswell"
    assert m["verification"]["status"] == "passed"
