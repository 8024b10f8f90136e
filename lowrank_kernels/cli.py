"""The ``lowrank-kernels`` command line."""

from __future__ import annotations

import argparse
import importlib.util
import math
import pickle
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


def _info(_: argparse.Namespace) -> int:
    import torch

    import lowrank_kernels as lrk
    from lowrank_kernels.ops.backends.cuda_backend import extension_info

    triton_version = "not installed"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    rows = [
        ("lowrank_kernels", lrk.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version),
        ("CUDA (torch build)", torch.version.cuda or "none (CPU build)"),
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            rows.append(
                (
                    f"GPU {index}",
                    f"{props.name} (sm_{props.major}{props.minor}, "
                    f"{props.total_memory / 2**30:.0f} GiB)",
                )
            )
    else:
        rows.append(("GPU", "none"))
    ext = extension_info()
    rows.append(
        (
            "_C extension",
            "not built" if ext is None else f"built for sm {ext.get('cuda_archs', '?')}",
        )
    )
    rows.append(("backends available", ", ".join(lrk.available_backends())))
    rows.append(("backend selected", lrk.get_backend()))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an int ``>= minimum`` (argparse turns the ValueError into exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _finite_float(*, positive: bool) -> Callable[[str], float]:
    """argparse type: a finite float, ``> 0`` if ``positive`` else ``>= 0``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


def _parse_value(text: str) -> object:
    """``"8"`` → 8, ``"0.25"`` → 0.25, ``"true"`` → True, ``"none"`` → None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


#: ``train``'s options that set a TrainConfig field: ``{argparse dest: field}``.
_CONFIG_OPTIONS = {
    "model": "model",
    "method": "method",
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "eval_every": "eval_every",
    "seed": "seed",
    "device": "device",
    "dist_timeout": "dist_timeout_s",
}


def _strategy_kwargs(args: argparse.Namespace, method: str) -> dict[str, object]:
    """``--opt KEY=VALUE`` entries and ``--rank`` (under ``method``'s argument name)."""
    kwargs: dict[str, object] = {}
    for item in args.opt or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = _parse_value(value)
    if args.rank is not None:
        rank_arg = {"fixed": "rank", "relora": "rank", "inrank": "init_rank"}.get(method)
        if rank_arg is None:
            raise ValueError(
                f"--rank is not used by --method {method} "
                "(full trains dense; cuttlefish chooses its ranks from the stable ranks)"
            )
        kwargs[rank_arg] = _parse_value(args.rank)
    return kwargs


def _print_report(report: dict) -> None:
    ranks = report["ranks"]
    rank_text = (
        "dense"
        if not ranks
        else f"{len(ranks)} layers, ranks {min(ranks.values())}-{max(ranks.values())}"
    )
    rows = [
        ("method", report["method"]),
        ("model", f"{report['model']} on {report['device']}, backend {report['backend']}"),
        ("switch step", str(report["switch_step"])),
        ("low-rank layers", rank_text),
        ("parameters", f"{report['params_before']:,} -> {report['params_after']:,}"),
        ("train time", f"{report['train_time_s']:.1f} s"),
        (f"{report['items']}/s", f"{report['tokens_per_s']:,.0f}"),
        ("final train loss", f"{report['final_train_loss']:.4f}"),
        ("final val loss", f"{report['final_val_loss']:.4f}"),
    ]
    if report.get("final_val_accuracy") is not None:
        rows.append(("final val accuracy", f"{report['final_val_accuracy']:.2%}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _train(args: argparse.Namespace) -> int:
    from lowrank_kernels.train import TrainConfig, Trainer, write_report
    from lowrank_kernels.train.checkpoint import check_writable
    from lowrank_kernels.train.trainer import is_main_process, load_checkpoint

    log = None if args.quiet else print
    if args.device is not None and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    for path, what in ((args.save, "--save"), (args.report, "--report")):
        if path:
            check_writable(path, what)  # before training, not after it
    if args.save_every is not None and not args.save:
        raise ValueError("--save-every needs --save PATH")
    # Only the options given on the command line: TrainConfig holds the defaults, and a
    # resumed run checks the given ones against its checkpoint instead of ignoring them.
    given = {
        field: getattr(args, dest)
        for dest, field in _CONFIG_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if args.opt or args.rank is not None:
            method = args.method or ckpt["config"]["method"]
            given["strategy_kwargs"] = _strategy_kwargs(args, method)
        trainer = Trainer.from_checkpoint(ckpt, progress=not args.no_progress, log=log, **given)
    else:
        if args.steps is None and args.epochs is None:
            given["steps"], given["epochs"] = (
                (300, None) if args.model in (None, "gpt") else (None, 20)
            )
        given["strategy_kwargs"] = _strategy_kwargs(args, args.method or "full")
        trainer = Trainer(TrainConfig(**given), progress=not args.no_progress, log=log)
    trainer.fit(checkpoint=args.save, save_every=args.save_every)
    report = trainer.report()
    status = 128 + signal.Signals[trainer.interrupted] if trainer.interrupted else 0
    if not is_main_process():
        return status  # rank 0 speaks for the run: one report, one checkpoint
    _print_report(report)
    if args.report and write_report(report, args.report):
        print(f"report written to {args.report}")
    if trainer.interrupted:
        saved = f"; checkpoint at step {trainer.step} in {args.save}" if args.save else ""
        print(f"lowrank-kernels train: interrupted by {trainer.interrupted}{saved}",
              file=sys.stderr)  # fmt: skip
    return status


def _demo(args: argparse.Namespace) -> int:
    from lowrank_kernels.train import format_demo, run_demo, write_report

    result = run_demo(
        quick=args.quick,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        log=None if args.quiet else print,
    )
    print(format_demo(result))
    print(f"demo wall time {result['wall_time_s']:.1f} s")
    if args.report and write_report(result, args.report):
        print(f"report written to {args.report}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"{args.suite}.py"
    if not script.is_file():
        print(
            f"lowrank-kernels bench: {script} not found; the benchmarks live in the source "
            "checkout (install it with `pip install -e .` from a clone)",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *args.options])


def _selftest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lowrank_kernels.selftest import run_selftest

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    steps = run_selftest(
        device=args.device,
        out=Path(args.out) if args.out else None,
        sanitizer=args.sanitizer,
        bench=args.bench,
        only=only,
        cases=args.cases,
        progress=not args.no_progress and args.json is None,
    )
    if args.json:
        import json
        from dataclasses import asdict

        Path(args.json).write_text(json.dumps([asdict(s) for s in steps]))
    return 0 if all(s.passed for s in steps) else 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lowrank-kernels",
        description="Fused low-rank layer kernels for PyTorch.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show Python tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions, the GPU and the available backends")
    info.set_defaults(func=_info)

    train = sub.add_parser(
        "train",
        help="train a small model full-rank or with a low-rank strategy",
        description="Train the char-level GPT (pydoc text) or the digits CNN with one "
        "method and print (and optionally write) a JSON report.",
    )
    train.add_argument("--model", choices=("gpt", "cnn"), help="the task (default gpt)")
    train.add_argument(
        "--method",
        choices=("full", "fixed", "cuttlefish", "relora", "inrank"),
        help="how to train (default full)",
    )
    train.add_argument(
        "--rank",
        help="fixed: int or ratio of full rank (e.g. 0.25) or 'stable'; relora: LoRA rank; "
        "inrank: initial rank",
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_int_at_least(1), help="optimizer steps (gpt default 300)")
    length.add_argument(
        "--epochs",
        type=_finite_float(positive=True),
        help="epochs over the training split (cnn default 20)",
    )
    train.add_argument(
        "--batch-size", type=_int_at_least(1), help="per-step batch (default: the task's)"
    )
    train.add_argument(
        "--lr", type=_finite_float(positive=True), help="peak learning rate (default 3e-3)"
    )
    train.add_argument("--weight-decay", type=_finite_float(positive=False), help="default 0.01")
    train.add_argument("--warmup-steps", type=_int_at_least(0), help="default 20")
    train.add_argument(
        "--eval-every", type=_int_at_least(1), help="steps between validation passes"
    )
    train.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="strategy option, repeatable (e.g. --opt cycle=50 --opt track_every=10)",
    )
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--device", help="auto (CUDA if available; the default), cpu, cuda")
    train.add_argument(
        "--dist-timeout",
        type=_finite_float(positive=True),
        help="torchrun: seconds to wait for a peer before failing (default 300)",
    )
    train.add_argument("--report", help="write the JSON report here (rank 0 only)")
    train.add_argument(
        "--save",
        help="checkpoint path: written atomically every --save-every steps, at the end and "
        "on SIGINT/SIGTERM",
    )
    train.add_argument(
        "--save-every",
        type=_int_at_least(1),
        help="steps between checkpoints (default: a tenth of the run, at least 100)",
    )
    train.add_argument(
        "--resume",
        help="continue from a checkpoint; --eval-every, --device and --dist-timeout may "
        "change, any other run option given must match the checkpoint's",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--quiet", action="store_true", help="no log lines")
    train.set_defaults(func=_train)

    demo = sub.add_parser(
        "demo",
        help="train a char-level GPT full-rank and with Cuttlefish and compare",
        description="Trains a small character-level GPT on Python's own pydoc text once "
        "full-rank and once with Cuttlefish, then prints per-layer ranks, parameters, "
        "tokens/s, validation losses and the speedup.",
    )
    demo.add_argument("--quick", action="store_true", help="tiny configuration (seconds)")
    demo.add_argument("--report", help="write both runs' JSON reports here")
    demo.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--quiet", action="store_true", help="no log lines")
    demo.set_defaults(func=_demo)

    selftest = sub.add_parser(
        "selftest",
        help="check every backend against float64 (and on a GPU: sanitizer, benchmarks)",
        description="Correctness of every available backend on this machine (forward and "
        "every gradient against a float64 reference); with CUDA optionally "
        "compute-sanitizer and the benchmark grids. Writes everything to --out. Exit "
        "status 0 iff every step passed.",
    )
    selftest.add_argument("--out", help="directory for logs, CSVs and the summary")
    selftest.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    selftest.add_argument(
        "--sanitizer", action="store_true", help="also run compute-sanitizer (CUDA only)"
    )
    selftest.add_argument(
        "--bench",
        choices=("none", "quick", "full"),
        help="benchmark grids to run (default: quick on a GPU, none on the CPU)",
    )
    selftest.add_argument("--only", help="comma-separated backends to check (and 'auto')")
    selftest.add_argument("--cases", choices=("cpu", "gpu", "sanitizer"), help=argparse.SUPPRESS)
    selftest.add_argument("--json", help=argparse.SUPPRESS)  # child processes report here
    selftest.add_argument("--no-progress", action="store_true", help="no progress bar")
    selftest.set_defaults(func=_selftest)

    bench = sub.add_parser(
        "bench",
        help="run the kernel microbenchmarks or the end-to-end benchmark",
        description="Runs benchmarks/kernels.py or benchmarks/e2e.py from the source "
        "checkout; options after the suite name are passed on (see their --help).",
    )
    bench.add_argument("suite", choices=("kernels", "e2e"))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(func=_bench)
    return parser


# What a user's mistake raises (bad values, missing or unreadable files, a checkpoint
# that is not one): one line and exit status 2. Anything else is a bug: a traceback.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowrank-kernels`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"lowrank-kernels {args.command}: error: {message} (--debug shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"lowrank-kernels {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
