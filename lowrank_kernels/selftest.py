"""``lowrank-kernels selftest``: is this install correct on this machine, and how fast is it?

One command for users and for GPU bring-up. It builds nothing. It runs:

1. correctness: every available backend (torch, triton, cuda; ``auto`` on GPUs) on a grid
   of shapes, dtypes, bias and ``recompute_intermediate``, forward and every gradient held
   to the numerics rule of :mod:`lowrank_kernels.testing`. On a CPU machine the Triton
   kernels run under the interpreter, in a child process (``TRITON_INTERPRET=1`` must be
   set before triton is imported);
2. optionally (``--sanitizer``, CUDA only) the same checks on small shapes under
   ``compute-sanitizer --tool memcheck`` per GPU backend, and ``racecheck`` for the CUDA
   C++ kernels;
3. optionally (``--bench quick|full``, default ``quick`` on a GPU) the kernel
   microbenchmarks (and with ``full`` the end-to-end benchmark) from the source checkout.

Everything — per-check results, child logs, benchmark CSVs, the tuned dispatch decisions,
``summary.md`` and ``selftest.json`` — goes to ``--out DIR``. The exit status is 0 iff
every step passed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .ops import available_backends, dispatch_decisions, set_backend
from .ops.backends import BACKENDS
from .testing import compare_with_reference

# (leading dims of x, K, N, r): odd sizes, a 3-D input, rank 1, and ranks past the
# interpreter's 32-wide chunk (Z through memory) and past the GPU's largest on-chip chunk.
CPU_CASES = ((("5",), 37, 45, 5), (("2", "9"), 40, 70, 40), (("1",), 24, 30, 1))
GPU_CASES = (
    ((1,), 4096, 4096, 64),
    ((16,), 1024, 3000, 192),
    ((4, 300), 768, 768, 192),
    ((4097,), 1000, 3001, 33),
    ((512,), 4096, 4096, 1024),
)
SANITIZER_CASES = (((5,), 40, 70, 40), ((33,), 64, 100, 300))
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    """One line of the final table."""

    name: str
    passed: bool
    detail: str
    seconds: float


def _cases(kind: str) -> Iterable[tuple[tuple[int, ...], int, int, int]]:
    if kind == "cpu":
        return [(tuple(int(d) for d in lead), K, N, r) for lead, K, N, r in CPU_CASES]
    return GPU_CASES if kind == "gpu" else SANITIZER_CASES


def _random(shape: tuple[int, ...], scale: float, dtype: torch.dtype, device: torch.device,
            generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


def check_backend(backend: str, device: torch.device, kind: str) -> Step:
    """The numerics rule for ``backend`` on ``device`` over the ``kind`` grid of cases."""
    dtypes = [torch.float32, torch.bfloat16]
    if device.type == "cuda":
        dtypes.append(torch.float16)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    worst = ("", 0.0)
    failures = []
    count = 0
    for lead, K, N, r in _cases(kind):
        for dtype in dtypes:
            for bias in (True, False):
                for recompute in (False, True):
                    x = _random((*lead, K), 1.0, dtype, device, generator)
                    V = _random((K, r), K**-0.5, dtype, device, generator)
                    U = _random((r, N), r**-0.5, dtype, device, generator)
                    b = _random((N,), 1.0, dtype, device, generator) if bias else None
                    label = f"x{[*lead, K]} r={r} N={N} {str(dtype)[6:]}"
                    label += f"{' bias' if bias else ''}{' recompute' if recompute else ''}"
                    try:
                        errors = compare_with_reference(backend, x, V, U, b, recompute=recompute)
                    except Exception as exc:  # a crash is a failed check, reported
                        failures.append(f"{label}: {type(exc).__name__}: {exc}")
                        continue
                    count += 1
                    for name, (error, bound) in errors.items():
                        ratio = error / bound
                        if ratio > worst[1]:
                            worst = (f"{label} d{name}" if name != "y" else label, ratio)
                        if error > bound:
                            failures.append(f"{label} {name}: {error:.3g} > {bound:.3g}")
    set_backend("auto")
    detail = (
        f"{count} cases; worst error/bound {worst[1]:.2f} ({worst[0]})"
        if not failures
        else f"{len(failures)} failed: " + "; ".join(failures[:3])
    )
    return Step(f"{backend} on {device.type}", not failures, detail, time.perf_counter() - start)


def _child(args: list[str], env: dict[str, str], log: Path | None, prefix: list[str] = ()
           ) -> tuple[int, str]:  # fmt: skip
    command = [*prefix, sys.executable, "-m", "lowrank_kernels", "selftest", *args]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    output = f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}"
    if log is not None:
        log.write_text(output)
    return proc.returncode, output


def _child_steps(args: list[str], env: dict[str, str], log: Path | None, name: str,
                 prefix: list[str] = ()) -> list[Step]:  # fmt: skip
    """Run checks in a child process and read back its steps."""
    with tempfile.TemporaryDirectory(prefix="lrk_selftest_") as tmp:
        result = Path(tmp) / "steps.json"
        start = time.perf_counter()
        rc, output = _child([*args, "--json", str(result)], env, log, prefix)
        if result.is_file():
            steps = [Step(**s) for s in json.loads(result.read_text())]
            if rc != 0 and all(s.passed for s in steps):
                steps.append(Step(name, False, f"exit status {rc}", time.perf_counter() - start))
            return steps
        tail = output.strip().splitlines()[-1:] or [""]
        return [Step(name, False, f"exit status {rc}: {tail[0][:200]}",
                     time.perf_counter() - start)]  # fmt: skip


def correctness_steps(device: torch.device, only: list[str] | None, kind: str,
                      log_dir: Path | None) -> list[Step]:  # fmt: skip
    """One step per backend: in this process where it can run, else in a child process
    (the Triton interpreter on CPU tensors)."""
    steps = []
    names = [n for n in BACKENDS if only is None or n in only]
    for name in names:
        reason = BACKENDS[name].unsupported_reason(device)
        if reason is None:
            steps.append(check_backend(name, device, kind))
        elif name == "triton" and device.type == "cpu" and importlib.util.find_spec("triton"):
            log = log_dir / "triton_interpreter.log" if log_dir else None
            steps += _child_steps(["--only", "triton", "--device", "cpu", "--bench", "none",
                                   "--cases", kind], {"TRITON_INTERPRET": "1"}, log,
                                  "triton on cpu")  # fmt: skip
        else:  # not runnable here: a failure only if it was asked for by name
            steps.append(Step(f"{name} on {device.type}", only is None,
                              f"skipped: {reason}", 0.0))  # fmt: skip
    if device.type == "cuda" and (only is None or "auto" in only):
        steps.append(check_backend("auto", device, kind))
    return steps


def sanitizer_steps(log_dir: Path | None) -> list[Step]:
    """memcheck over each GPU backend, racecheck over the CUDA C++ kernels."""
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return [Step("compute-sanitizer", False, "compute-sanitizer not found on PATH", 0.0)]
    steps = []
    runs = [("memcheck", b) for b in ("triton", "cuda") if b in available_backends()]
    if "cuda" in available_backends():
        runs.append(("racecheck", "cuda"))
    for check, backend in runs:
        log = log_dir / f"sanitizer_{check}_{backend}.log" if log_dir else None
        prefix = [tool, "--tool", check, "--error-exitcode", "1"]
        steps += _child_steps(["--only", backend, "--device", "cuda", "--bench", "none",
                               "--cases", "sanitizer"], {}, log, f"{check} {backend}",
                              prefix)  # fmt: skip
        steps[-1].name = f"{check}: {steps[-1].name}"
    return steps


def bench_steps(level: str, out: Path | None, log_dir: Path | None) -> list[Step]:
    """The kernel grid (``quick``: the default GPU grid; ``full``: every grid and e2e)."""
    scripts = REPO / "benchmarks"
    if not (scripts / "kernels.py").is_file():
        return [Step("benchmarks", False, f"{scripts} not found (needs the source checkout)", 0)]
    runs = [("kernels", ["--grid", "headline"])]
    if level == "full":
        runs = [("kernels", ["--grid", "full"]), ("kernels", ["--grid", "subset"]),
                ("e2e", [])]  # fmt: skip
    steps = []
    for suite, options in runs:
        if out is not None:
            options = options + (["--out", str(out / f"{suite}.csv")] if suite == "kernels"
                                 else ["--out-dir", str(out)])  # fmt: skip
        start = time.perf_counter()
        command = [sys.executable, str(scripts / f"{suite}.py"), *options]
        proc = subprocess.run(command, capture_output=True, text=True)
        if log_dir is not None:
            (log_dir / f"bench_{suite}_{'_'.join(options[:2])}.log".replace("/", "_")).write_text(
                f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}"
            )
        name = f"bench {suite} {' '.join(options[:2])}"
        seconds = time.perf_counter() - start
        steps.append(Step(name, proc.returncode == 0, f"exit status {proc.returncode}", seconds))
    return steps


def format_table(steps: list[Step]) -> str:
    width = max([len(s.name) for s in steps] + [4])
    lines = [f"{'step':<{width}}  result  seconds  detail"]
    for s in steps:
        result = "SKIP" if s.detail.startswith("skipped") else ("PASS" if s.passed else "FAIL")
        lines.append(f"{s.name:<{width}}  {result:<6}  "
                     f"{s.seconds:7.1f}  {s.detail}")  # fmt: skip
    return "\n".join(lines)


def run_selftest(
    *,
    device: str = "auto",
    out: Path | None = None,
    sanitizer: bool = False,
    bench: str | None = None,
    only: list[str] | None = None,
    cases: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[Step]:
    """Run the self-test and return its steps (see the module docstring).

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        out: directory for every artefact (created); ``None`` writes nothing.
        sanitizer: run the compute-sanitizer steps (CUDA only).
        bench: ``"none"``, ``"quick"`` or ``"full"``; default ``quick`` on CUDA, else none.
        only: restrict the correctness checks to these backend names (and ``"auto"``).
        cases: ``"cpu"``, ``"gpu"`` or ``"sanitizer"`` grid; default by device.
    """
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))  # fmt: skip
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("selftest: device 'cuda' was asked for but CUDA is not available")
    bench = bench or ("quick" if dev.type == "cuda" else "none")
    kind = cases or ("gpu" if dev.type == "cuda" else "cpu")
    log_dir = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log_dir = out / "logs"
        log_dir.mkdir(exist_ok=True)
    plan: list[tuple[str, Callable[[], list[Step]]]] = [
        ("correctness", lambda: correctness_steps(dev, only, kind, log_dir))
    ]
    if sanitizer:
        if dev.type != "cuda":
            plan.append(("sanitizer", lambda: [Step("compute-sanitizer", False,
                                                    "needs a CUDA device", 0.0)]))  # fmt: skip
        else:
            plan.append(("sanitizer", lambda: sanitizer_steps(log_dir)))
    if bench != "none":
        plan.append(("benchmarks", lambda: bench_steps(bench, out, log_dir)))

    from tqdm import tqdm

    steps: list[Step] = []
    for _, run in tqdm(plan, desc="selftest", disable=not progress, unit="stage"):
        steps += run()
    if out is not None:
        decisions = dispatch_decisions()
        (out / "dispatch_decisions.json").write_text(json.dumps(decisions, indent=1))
        meta = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "backends": available_backends(),
        }
        (out / "selftest.json").write_text(
            json.dumps({"meta": meta, "steps": [asdict(s) for s in steps]}, indent=1)
        )
        (out / "summary.md").write_text(
            f"# lowrank-kernels selftest\n\n{meta}\n\n```\n{format_table(steps)}\n```\n"
        )
    if log is not None:
        log(format_table(steps))
    return steps
