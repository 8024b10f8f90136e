"""The CUDA C++ sources in ``csrc/`` compile, warning-free, on every change — and their logic runs.

Nothing here needs a GPU. With the machine's nvcc and the installed torch's headers:

* every ``csrc/*.cu`` is compiled (``nvcc -c``) for sm_80 and for sm_90 with the flags
  torch's ``BuildExtension`` and ``setup.py`` use, plus ``-Werror all-warnings`` and
  ``-Xcompiler -Wall,-Wextra,-Werror``; every ``csrc/*.cpp`` with g++ and the same
  warnings (``-c``, or ``-fsyntax-only`` for the files that need libc10_cuda to link);
* torch's, Python's and CUDA's headers are included with ``-isystem``, so the warning
  flags apply to this project's code only (torch's own headers are not warning-clean under
  ``-Wextra``);
* the real kernel source runs on the CPU under ``csrc/emu/cuda_emulation.h`` (one thread
  per CUDA thread, barriers for ``__syncthreads``) against a float64 reference;
* ``chain_op.cpp`` + ``module.cpp`` (schema, Meta kernel, ``build_info``) are linked
  against the CPU torch and loaded, so the op registration is exercised for real.

Without nvcc the module is skipped, unless ``LOWRANK_KERNELS_REQUIRE_NVCC=1`` (CI) makes
that a failure. All compiles start together (two cores: ~30-40 s wall in total).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CU_SOURCES = sorted(CSRC.glob("*.cu"))
CPP_SOURCES = sorted(CSRC.glob("*.cpp"))
# Files that include c10/cuda headers reference libc10_cuda symbols: compile-checked only.
CUDA_LINKED_CPP = {"chain_cuda.cpp"}
ARCHS = ("80", "90")
# Must match setup.py's extra_compile_args (the CI check compiles what pip builds).
CXX_STD = "-std=c++17"
SETUP_NVCC_FLAGS = ["-O3", CXX_STD, "--use_fast_math", "-lineinfo"]

pytestmark = pytest.mark.slow


def _find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_include_dir(nvcc: str) -> str:
    """The toolkit's include dir (nvcc may be a wrapper script, so ask it for its TOP)."""
    dry = subprocess.run(
        [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True
    )
    match = re.search(r"^#\$ TOP=(.+)$", dry.stderr + dry.stdout, re.MULTILINE)
    candidates = [Path(match.group(1).strip()) / "include"] if match else []
    candidates.append(Path(nvcc).resolve().parent.parent / "include")
    for candidate in candidates:
        if (candidate / "cuda_runtime_api.h").exists():
            return str(candidate)
    raise RuntimeError(f"cannot find the CUDA include dir of {nvcc} (tried {candidates})")


NVCC = _find_nvcc()
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")

if NVCC is None or CXX is None:
    missing = "nvcc" if NVCC is None else "a C++ compiler (g++)"
    if os.environ.get("LOWRANK_KERNELS_REQUIRE_NVCC", "").strip() == "1":
        raise RuntimeError(
            f"LOWRANK_KERNELS_REQUIRE_NVCC=1 but {missing} was not found: the csrc/ compile "
            "check cannot run (install the CUDA toolkit or set CUDA_HOME)"
        )
    pytest.skip(
        f"{missing} not found: csrc/ compile check skipped "
        "(set LOWRANK_KERNELS_REQUIRE_NVCC=1 to make this a failure)",
        allow_module_level=True,
    )


def _common_flags() -> list[str]:
    """Defines and include dirs torch's BuildExtension + setup.py use, headers as -isystem."""
    flags = [
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        # As ninja passes it after shlex quoting: the macro is a string literal.
        '-DLOWRANK_KERNELS_CUDA_ARCHS="80;90"',
    ]
    torch_include = Path(cpp_extension.include_paths()[0])
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # CPU wheels of torch ship c10/cuda headers without this generated file; it only
        # defines C10_CUDA_BUILD_SHARED_LIBS (Windows dllimport), so skipping it is harmless.
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    for include in [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]:
        flags += ["-isystem", include]
    flags.append(f"-I{CSRC}")
    return flags


def nvcc_command(source: Path, arch: str, out: Path) -> list[str]:
    return [
        NVCC,
        "-c",
        str(source),
        "-o",
        str(out),
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-Xcompiler",
        "-fPIC",
        *SETUP_NVCC_FLAGS,
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        *_common_flags(),
        "-Werror",
        "all-warnings",
        "-Xcompiler",
        "-Wall,-Wextra,-Werror",
        "-Xptxas",
        "-v",  # registers, stack and spills per kernel: test_cuda_kernels_do_not_spill
    ]


def cxx_command(source: Path, out: Path | None) -> list[str]:
    mode = ["-c", "-o", str(out)] if out is not None else ["-fsyntax-only"]
    return [
        CXX,
        CXX_STD,
        "-O0",
        "-fPIC",
        *mode,
        str(source),
        *_common_flags(),
        "-isystem",
        _cuda_include_dir(NVCC),
        "-Wall",
        "-Wextra",
        "-Werror",
    ]


@dataclass
class Job:
    """One compiler run started in the background; ``result()`` waits for it."""

    name: str
    command: list[str]
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def result(self, timeout: float = 300) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


@pytest.fixture(scope="module")
def build():
    """Start every compile at once (they are independent); tests wait on their own job."""
    with tempfile.TemporaryDirectory(prefix="lrk_csrc_") as tmp:
        tmp_path = Path(tmp)
        jobs: dict[str, Job] = {}
        for source in CU_SOURCES:
            for arch in ARCHS:
                name = f"{source.name}:sm_{arch}"
                jobs[name] = Job(name, nvcc_command(source, arch, tmp_path / f"{name}.o"))
        for source in CPP_SOURCES:
            out = None if source.name in CUDA_LINKED_CPP else tmp_path / f"{source.stem}.o"
            jobs[source.name] = Job(source.name, cxx_command(source, out))
        emulator = tmp_path / "emulate_chain"
        jobs["emulator"] = Job(
            "emulator",
            [
                CXX,
                "-std=c++20",
                "-O1",
                "-pthread",
                f"-I{CSRC}",
                "-Wall",
                "-Wextra",
                "-Werror",
                str(CSRC / "emu" / "emulate_chain.cpp"),
                "-o",
                str(emulator),
            ],
        )
        yield tmp_path, jobs
        for job in jobs.values():
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()


def _assert_clean(jobs: dict[str, Job], name: str) -> None:
    rc, out = jobs[name].result()
    assert rc == 0, f"{name} failed to compile:\n{out[-6000:]}\ncommand: {jobs[name].command}"
    assert "warning" not in out.lower(), f"{name} compiled with warnings:\n{out[-6000:]}"


def test_sources_exist():
    names = {p.name for p in CU_SOURCES + CPP_SOURCES}
    assert {"chain_kernels.cu", "chain_op.cpp", "chain_cuda.cpp", "module.cpp"} <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", [p.name for p in CU_SOURCES])
def test_cu_compiles_without_warnings(build, source, arch):
    _assert_clean(build[1], f"{source}:sm_{arch}")


@pytest.mark.parametrize("source", [p.name for p in CPP_SOURCES])
def test_cpp_compiles_without_warnings(build, source):
    _assert_clean(build[1], source)


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for 'sm_(?P<arch>\d+)'")
_PTXAS_SPILLS = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
    r"(?P<loads>\d+) bytes spill loads"
)
_PTXAS_REGISTERS = re.compile(r"Used (?P<regs>\d+) registers")


def parse_ptxas_verbose(text: str) -> dict[str, dict[str, int]]:
    """``{kernel: {"registers", "stack", "spill_stores", "spill_loads"}}`` from ``-Xptxas -v``."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        if match := _PTXAS_ENTRY.search(line):
            current = kernels.setdefault(match["name"], {})
        elif current is not None and (match := _PTXAS_SPILLS.search(line)):
            current.update(stack=int(match["stack"]), spill_stores=int(match["stores"]),
                           spill_loads=int(match["loads"]))  # fmt: skip
        elif current is not None and (match := _PTXAS_REGISTERS.search(line)):
            current["registers"] = int(match["regs"])
    return kernels


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_kernels_do_not_spill(build, arch, capsys):
    """Every instantiation of every csrc/ kernel: zero stack frame and zero spills."""
    name = f"chain_kernels.cu:sm_{arch}"
    _assert_clean(build[1], name)
    kernels = parse_ptxas_verbose(build[1][name].result()[1])
    assert len(kernels) >= 9, kernels  # chain_tc_kernel x6 (fp16/bf16 x 3 tiles), f32 x3
    names = sorted(kernels)
    if shutil.which("c++filt"):
        demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                                   text=True).stdout.splitlines()  # fmt: skip
        readable = dict(zip(names, demangled, strict=True))
    else:
        readable = {name: name for name in names}
    with capsys.disabled():
        print(f"\ncsrc/chain_kernels.cu on sm_{arch} (nvcc -Xptxas -v):")
        for kernel, usage in sorted(kernels.items()):
            name = readable[kernel].removeprefix("void lowrank_kernels::(anonymous namespace)::")
            print(f"  {usage.get('registers', '?'):>4} regs  {usage.get('stack', '?'):>3} B stack  "
                  f"{usage.get('spill_stores', '?'):>3} B spill stores  {name}")  # fmt: skip
    for kernel, usage in kernels.items():
        assert set(usage) == {"registers", "stack", "spill_stores", "spill_loads"}, kernel
        assert usage["stack"] == usage["spill_stores"] == usage["spill_loads"] == 0, (
            kernel,
            usage,
        )


def test_ptxas_parser_reads_spills():
    """The parser above sees a spill when ptxas reports one (a captured -v report)."""
    report = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    16 bytes stack frame, 12 bytes spill stores, 24 bytes spill loads\n"
        "ptxas info    : Used 128 registers, used 1 barriers, 16 bytes cumulative stack size\n"
    )
    assert parse_ptxas_verbose(report) == {
        "_Z1kPf": {"registers": 128, "stack": 16, "spill_stores": 12, "spill_loads": 24}
    }


def test_emulated_kernels_match_float64_reference(build):
    """The real kernels + host planning, run on the CPU (see csrc/emu/emulate_chain.cpp).

    Covers fp16/bf16 (tensor-core path, WMMA emulated with fp32 accumulation) and fp32,
    odd shapes, transposed/padded strides, strided bias, rank 1..512, K = 0, N = 0, the
    split over N, smaller shared-memory budgets and the fallback decisions; every output
    is compared with a float64 reference and guarded against out-of-bounds reads/writes.
    An inf in x must give the reference's +inf row, not NaN from padded rank lanes.
    """
    tmp_path, jobs = build
    _assert_clean(jobs, "emulator")
    run = subprocess.run(
        [str(tmp_path / "emulate_chain")], capture_output=True, text=True, timeout=300
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    case_lines = [line for line in run.stdout.splitlines() if line.startswith("case ")]
    assert len(case_lines) >= 23, report
    assert all(line.rstrip().endswith(("ok", "ok (not launched)")) for line in case_lines), report
    assert "0 of" in run.stdout, report


def test_warnings_are_errors_and_errors_fail(tmp_path):
    """The check itself can fail: a warning (unused variable) in device and host code, and a
    syntax error, each compiled with exactly the flags above, in small files for speed."""
    header = '#include "chain_kernels.h"\n'
    warn_cu = tmp_path / "warn.cu"
    warn_cu.write_text(header + "__global__ void k(float* x) { int lrk_dead = 1; x[0] = 1.f; }\n")
    broken_cu = tmp_path / "broken.cu"
    broken_cu.write_text(header + "__global__ void k(float* x) { x[0] = = 1.f; }\n")
    warn_cpp = tmp_path / "warn.cpp"
    warn_cpp.write_text(header + "int f() { int lrk_dead = 1; return 0; }\n")
    jobs = [
        Job("warn.cu", nvcc_command(warn_cu, ARCHS[0], tmp_path / "warn.o")),
        Job("broken.cu", nvcc_command(broken_cu, ARCHS[-1], tmp_path / "broken.o")),
        Job("warn.cpp", cxx_command(warn_cpp, None)),
    ]
    for job in jobs:
        rc, out = job.result()
        assert rc != 0, f"{job.name}: the compile check did not fail:\n{out[-3000:]}"
        assert ("lrk_dead" in out) if job.name.startswith("warn") else ("error" in out), out


def test_cpu_build_registers_op_schema_meta_kernel_and_build_info(build):
    """Link chain_op.o + module.o against the CPU torch and load them in a fresh process."""
    tmp_path, jobs = build
    for name in ("chain_op.cpp", "module.cpp"):
        _assert_clean(jobs, name)
    torch_lib = Path(torch.__file__).parent / "lib"
    ext = tmp_path / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    link = subprocess.run(
        [
            CXX,
            "-shared",
            str(tmp_path / "chain_op.o"),
            str(tmp_path / "module.o"),
            "-o",
            str(ext),
            f"-L{torch_lib}",
            "-lc10",
            "-ltorch_cpu",
            f"-Wl,-rpath,{torch_lib}",
        ],
        capture_output=True,
        text=True,
    )
    assert link.returncode == 0, link.stderr
    script = textwrap.dedent(
        """
        import sys
        import torch
        sys.path.insert(0, sys.argv[1])
        import _C

        info = _C.build_info()
        assert info["cuda_archs"] == "80;90", info
        assert re.fullmatch(r"\\d+\\.\\d+", info["cuda_version"]), info
        op = torch.ops.lowrank_cuda.chain
        assert str(op.default._schema) == (
            "lowrank_cuda::chain(Tensor a, Tensor b, Tensor c, Tensor? bias, "
            "bool write_intermediate) -> (Tensor, Tensor)"
        ), op.default._schema

        meta = dict(device="meta")
        a, b = torch.empty(6, 20, **meta), torch.empty(3, 20, **meta).t()
        c, bias = torch.empty(3, 18, **meta), torch.empty(18, **meta)
        out, z = op(a, b, c, bias, True)
        assert out.shape == (6, 18) and out.is_contiguous() and z.shape == (6, 3)
        out, z = op(a, b, c, None, False)
        assert z.shape == (0, 3)

        bad = [
            ((a, c, c, None, True), ValueError, "b.shape\\\\[0\\\\] must equal a.shape\\\\[1\\\\]"),
            ((a, b, c, torch.empty(5, **meta), True), ValueError, "bias must have shape"),
            ((a, b.half(), c, None, True), TypeError, "b must have a's dtype"),
            ((a.int(), b, c, None, True), TypeError, "a must be float16"),
            ((a[0], b, c, None, True), ValueError, "a must be 2-D"),
        ]
        for args, exc, pattern in bad:
            try:
                op(*args)
            except exc as e:
                assert re.search(pattern, str(e)), (pattern, str(e))
            else:
                raise AssertionError(f"no {exc.__name__} for {pattern}")

        torch.library.opcheck(
            op.default, (a, b, c, bias, True),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )
        f = torch.compile(lambda a, b, c: op(a, b, c, None, True), dynamic=True,
                          fullgraph=True, backend="aot_eager")
        for m in (6, 9):
            out, z = f(torch.empty(m, 20, **meta), b, c)
            assert out.shape == (m, 18) and z.shape == (m, 3)
        print("OK")
        """
    ).replace("import sys\n", "import re\nimport sys\n", 1)
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout + run.stderr
