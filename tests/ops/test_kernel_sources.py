"""The CUDA sources compile, and the host-side launch signatures match them.

These tests need only nvcc (no GPU): each ``cuda_kernels/*.cu`` is compiled for sm_90
in both model dtypes, and the parameters of every ``extern "C"`` entry point (read from
the preprocessed source) are compared with
:data:`deltaconvert.backends.cuda.kernels.SIGNATURES`, the formats the launches use.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deltaconvert.backends.cuda.constants import CAT_MAX, header_text, nvcc_defines, nvcc_flags
from deltaconvert.backends.cuda.kernels import (CAT_OPERAND_BYTES, CONV_TARGETS_BYTES, SIGNATURES,
                                                kernel_dir)

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
SOURCES = sorted(kernel_dir().glob("*.cu"))
SCALARS = ("float", "__half")


def test_every_family_has_a_source():
    assert {p.stem for p in SOURCES} == set(SIGNATURES)


@needs_nvcc
@pytest.mark.parametrize("scalar", SCALARS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles(source: Path, scalar: str, tmp_path: Path):
    result = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++17", f"-I{kernel_dir()}", f"-DDC_SCALAR={scalar}",
         *nvcc_flags(), "-cubin", "-o", str(tmp_path / "out.cubin"), str(source)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _c_type_format(param: str, blob_sizes: dict[str, int]) -> str:
    param = param.strip()
    if "*" in param:
        return "P"
    words = param.replace("const", "").split()
    ctype = words[0]
    if words[:3] == ["unsigned", "long", "long"]:
        return "Q"
    if ctype == "int":
        return "i"
    if ctype == "float":
        return "f"
    if ctype in blob_sizes:
        return f"{blob_sizes[ctype]}s"
    raise AssertionError(f"unexpected kernel parameter type: {param!r}")


def _after_parameters(text: str, start: int) -> int:
    """The index just past the ``)`` that closes the parameter list opened before ``start``."""
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return i


def _entry_points(source: Path) -> dict[str, str]:
    pre = subprocess.run([NVCC, "-E", "-std=c++17", f"-I{kernel_dir()}", *nvcc_flags(), str(source)],
                         capture_output=True, text=True, check=True).stdout
    blob_sizes = {"CatOperands": CAT_MAX * CAT_OPERAND_BYTES, "ConvTargets": CONV_TARGETS_BYTES}
    entries = {}
    pattern = re.compile(r'extern\s+"C"\s+__attribute__\(\(global\)\)\s+void\s+'
                         r'(?:__attribute__\(\(launch_bounds\([^)]*\)\)\)\s*)?(\w+)\s*\(')
    for match in pattern.finditer(pre):
        params = pre[match.end():_after_parameters(pre, match.end()) - 1]
        entries[match.group(1)] = "".join(_c_type_format(p, blob_sizes)
                                          for p in params.split(",") if p.strip())
    return entries


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_signatures_match(source: Path):
    assert _entry_points(source) == SIGNATURES[source.stem]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_entry_point_starts_by_waiting_for_its_predecessor(source: Path):
    """With dependent launches (backends/cuda/dependent_launch.py) a kernel may start
    before the previous one on the stream has finished: the first statement of every
    entry point must be DC_GRID_START(), which waits for it."""
    text = source.read_text()
    pattern = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(')
    entries = list(pattern.finditer(text))
    assert entries, source.name
    for match in entries:
        end = _after_parameters(text, match.end())
        body = text[text.index("{", end) + 1:].lstrip()
        assert body.startswith("DC_GRID_START();"), \
            f"{source.name}: {match.group(1)} does not start with DC_GRID_START()"


def test_the_generated_header_is_current():
    """cuda_kernels/constants.cuh is the output of constants.py (regenerate it with
    ``python3 deltaconvert/backends/cuda/constants.py --header > cuda_kernels/constants.cuh``)."""
    assert (kernel_dir() / "constants.cuh").read_text() == header_text()


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_shared_constants_are_declared_once(source: Path, tmp_path: Path):
    """A plain nvcc compiles each kernel (through the generated header), the -D flags
    give the same result, and no hand-written source defines a shared name itself."""
    plain, flagged = tmp_path / "plain.cubin", tmp_path / "flagged.cubin"
    for out, flags in ((plain, []), (flagged, nvcc_flags())):
        subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", f"-I{kernel_dir()}", *flags, "-cubin",
                        "-o", str(out), str(source)], capture_output=True, text=True, check=True)
    assert plain.read_bytes() == flagged.read_bytes()
    handwritten = [source, *(p for p in kernel_dir().glob("*.cuh") if p.name != "constants.cuh")]
    for path in handwritten:
        text = path.read_text()
        for name in nvcc_defines():
            assert not re.search(rf"#define\s+{name}\b|\b{name}\s*=(?!=)", text), (path.name, name)
