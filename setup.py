"""Build script for lowrank_kernels.

Pure-Python install by default. The CUDA C++ fallback extension
``lowrank_kernels._C`` is built from ``csrc/`` only when CUDA-enabled torch and
nvcc are both present (or when forced). Environment switches, in the style of
the flash-attention build:

``LOWRANK_KERNELS_SKIP_CUDA_BUILD=1``   never build the extension.
``LOWRANK_KERNELS_FORCE_CUDA_BUILD=1``  build it even if no CUDA torch/GPU is detected
                                         (fails loudly if the toolchain is missing).
``LOWRANK_KERNELS_CUDA_ARCHS``          semicolon list of SM versions, default ``80;90``;
                                         the newest also gets PTX for forward compatibility.
``MAX_JOBS``                            parallel compile jobs for ninja.
``NVCC_THREADS``                        ``nvcc --threads`` per job (default 4).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _read_version() -> str:
    with open(os.path.join(ROOT, "lowrank_kernels", "_version.py")) as f:
        namespace: dict[str, str] = {}
        exec(f.read(), namespace)
    return namespace["__version__"]


def cuda_archs() -> list[str]:
    """Parse ``LOWRANK_KERNELS_CUDA_ARCHS`` ("80;90", "8.0;9.0" or "sm_90a" all accepted)."""
    raw = os.environ.get("LOWRANK_KERNELS_CUDA_ARCHS", "80;90")
    archs = []
    for item in raw.replace(",", ";").split(";"):
        item = item.strip().lower().removeprefix("sm_").replace(".", "")
        if not item:
            continue
        if not item.rstrip("a").isdigit():
            raise ValueError(
                f"LOWRANK_KERNELS_CUDA_ARCHS: expected SM versions like '80;90', got {raw!r}"
            )
        archs.append(item)
    if not archs:
        raise ValueError("LOWRANK_KERNELS_CUDA_ARCHS is empty; expected e.g. '80;90'")
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    newest = max(archs, key=lambda a: int(a.rstrip("a")))
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def cuda_extension_wanted() -> tuple[bool, str]:
    """Decide whether to build ``_C``; returns (build?, reason) for the build log."""
    if _env_flag("LOWRANK_KERNELS_SKIP_CUDA_BUILD"):
        return False, "LOWRANK_KERNELS_SKIP_CUDA_BUILD is set"
    force = _env_flag("LOWRANK_KERNELS_FORCE_CUDA_BUILD")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        if force:
            raise RuntimeError(
                "LOWRANK_KERNELS_FORCE_CUDA_BUILD=1 but torch is not importable in the build "
                "environment; install torch first and use `pip install --no-build-isolation .`"
            ) from None
        return False, "torch is not importable at build time (build isolation?)"
    if force:
        if CUDA_HOME is None:
            raise RuntimeError(
                "LOWRANK_KERNELS_FORCE_CUDA_BUILD=1 but no CUDA toolkit (nvcc) was found; "
                "set CUDA_HOME"
            )
        return True, "LOWRANK_KERNELS_FORCE_CUDA_BUILD is set"
    if torch.version.cuda is None:
        return False, "the installed torch is a CPU build"
    if CUDA_HOME is None:
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME to build the extension"
    return True, f"CUDA torch {torch.version.cuda} and nvcc at {CUDA_HOME}"


def build_extensions() -> tuple[list, dict]:
    build, reason = cuda_extension_wanted()
    print(
        f"lowrank_kernels: CUDA extension {'enabled' if build else 'skipped'}: {reason}",
        file=sys.stderr,
    )
    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp"))
    )
    if not build or not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = cuda_archs()
    nvcc_threads = os.environ.get("NVCC_THREADS", "4")
    arch_macro = f'-DLOWRANK_KERNELS_CUDA_ARCHS="{";".join(archs)}"'
    ext = CUDAExtension(
        name="lowrank_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17", arch_macro],
            "nvcc": [
                "-O3",
                "-std=c++17",
                "--use_fast_math",
                "-lineinfo",
                f"--threads={nvcc_threads}",
                arch_macro,
                *gencode_flags(archs),
            ],
        },
    )
    # BuildExtension reads MAX_JOBS itself and uses ninja when it is installed.
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = build_extensions()

setup(
    version=_read_version(),
    # The Triton kernels live in triton_ops/ at the top of the repository (next to csrc/)
    # but install inside the package's namespace: no generic top-level `triton_ops`.
    packages=[
        *find_packages(include=["lowrank_kernels", "lowrank_kernels.*"]),
        "lowrank_kernels.triton_ops",
    ],
    package_dir={"lowrank_kernels.triton_ops": "triton_ops"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
