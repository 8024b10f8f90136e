"""Run reports (JSON) and the ``demo``: a char GPT trained full-rank and with Cuttlefish."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from ..layers import candidate_layers, full_rank
from .checkpoint import atomic_write
from .trainer import TrainConfig, Trainer, is_main_process


def write_report(report: dict[str, Any], path: str | os.PathLike) -> bool:
    """Write ``report`` as indented JSON to ``path`` (atomically); only rank 0 writes under
    ``torchrun``.

    Returns whether this process wrote the file.
    """
    if not is_main_process():
        return False
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return True


def demo_configs(
    quick: bool = False, device: str = "auto", seed: int = 0
) -> dict[str, TrainConfig]:
    """The demo's two runs, ``{"full": ..., "cuttlefish": ...}``, identical but for the method.

    The default size finishes both runs in about two minutes on a 2-core CPU; ``quick``
    is a tiny smoke-test configuration (seconds).
    """
    if quick:
        model_kwargs = {"n_layer": 2, "n_head": 2, "d_model": 64}
        base = TrainConfig(
            model="gpt",
            steps=40,
            batch_size=8,
            warmup_steps=5,
            eval_every=20,
            seed=seed,
            device=device,
            task_kwargs={"block_size": 32, "eval_batches": 2, "model_kwargs": model_kwargs},
        )
        # Layers this small are launch-bound on every device, so the profiler would keep
        # them all dense; the smoke test skips it to exercise the switch itself.
        cuttlefish = {
            "track_every": 2,
            "span": 3,
            "window": 3,
            "tol": 2.0,
            "max_switch_step": 20,
            "profile": False,
        }
    else:
        model_kwargs = {"n_layer": 4, "n_head": 4, "d_model": 256}
        base = TrainConfig(
            model="gpt",
            steps=240,
            batch_size=16,
            lr=2e-3,
            warmup_steps=20,
            eval_every=60,
            seed=seed,
            device=device,
            task_kwargs={"block_size": 64, "eval_batches": 8, "model_kwargs": model_kwargs},
        )
        # Measured every 10 steps, the stable ranks of this short run keep drifting down by
        # about 1 per measurement after their initial collapse, so "converged" means a
        # mean |d srank| below 2 per measurement; step 120 is the fallback.
        cuttlefish = {
            "track_every": 10,
            "span": 3,
            "window": 3,
            "tol": 2.0,
            "max_switch_step": 120,
            "profile_repeats": 5,
        }
    return {
        "full": dataclasses.replace(base, method="full"),
        "cuttlefish": dataclasses.replace(base, method="cuttlefish", strategy_kwargs=cuttlefish),
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_demo(result: dict[str, Any]) -> str:
    """The demo's printed table from :func:`run_demo`'s result."""
    full, cf = result["runs"]["full"], result["runs"]["cuttlefish"]
    lines = [
        f"lowrank-kernels demo: char-level GPT on pydoc_data.topics, {full['steps']} steps, "
        f"device {full['device']}, backend {full['backend']}",
        "",
    ]
    layer_rows = [("layer", "full rank", "cuttlefish rank", "scaled stable rank")]
    scaled = cf["strategy"].get("scaled_stable_ranks", {})
    full_ranks = result.get("full_ranks", {})
    for fqn, fr in full_ranks.items():
        r = cf["ranks"].get(fqn)
        layer_rows.append((fqn, str(fr), "dense" if r is None else str(r), _fmt(scaled.get(fqn))))
    lines += _table(layer_rows)
    lines.append("")

    def pair(key: str, spec: str) -> tuple[str, str]:
        return _fmt(full[key], spec), _fmt(cf[key], spec)

    params = (f"{full['params_after']:,}", f"{cf['params_before']:,} -> {cf['params_after']:,}")
    rows = [
        ("", "full-rank", "cuttlefish"),
        ("switch step", "-", f"{_fmt(cf['switch_step'])} ({cf['strategy'].get('switch_reason')})"),
        ("parameters", *params),
        ("tokens/s (whole run)", *pair("tokens_per_s", ",.0f")),
        ("tokens/s (after switch)", "-", _fmt(cf["tokens_per_s_lowrank_phase"], ",.0f")),
        ("train time (s)", *pair("train_time_s", ".1f")),
        ("final train loss", *pair("final_train_loss", ".4f")),
        ("validation loss", *pair("final_val_loss", ".4f")),
    ]
    lines += _table(rows)
    lines.append("")
    lines.append(
        f"speedup: {_fmt(result['speedup_lowrank_phase'], '.2f')}x tokens/s in the low-rank "
        f"phase, {_fmt(result['speedup_end_to_end'], '.2f')}x end to end; "
        f"model size {cf['params_after'] / max(cf['params_before'], 1):.1%} of full-rank"
    )
    return "\n".join(lines)


def _warm_up(device: str) -> None:
    """Pay one-time costs (lazy imports in the optimizer, first-call kernel setup) before
    anything is timed, so they do not count against whichever run happens to go first."""
    for method in ("full", "fixed"):
        config = TrainConfig(
            model="gpt",
            method=method,
            steps=2,
            batch_size=2,
            device=device,
            eval_every=1000,
            task_kwargs={
                "block_size": 8,
                "eval_batches": 1,
                "model_kwargs": {"n_layer": 1, "n_head": 1, "d_model": 16},
            },
            strategy_kwargs={"rank": 4, "rank_multiple": 1} if method == "fixed" else {},
        )
        Trainer(config, progress=False, log=None).fit()


def run_demo(
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train the demo GPT full-rank and with Cuttlefish; return both reports and the speedup.

    Returns ``{"runs": {"full": report, "cuttlefish": report}, "full_ranks",
    "speedup_lowrank_phase", "speedup_end_to_end", "wall_time_s", "quick"}`` where the
    speedups are Cuttlefish's tokens/s (after the switch; whole run) over full-rank's.
    """
    start = time.perf_counter()
    _warm_up(device)
    runs = {}
    full_ranks: dict[str, int] = {}
    for name, config in demo_configs(quick, device, seed).items():
        trainer = Trainer(config, progress=progress, log=log)
        if name == "full":
            layers = candidate_layers(trainer.model, trainer.task.filter_fn)
            full_ranks = {fqn: full_rank(m) for fqn, m in layers.items()}
        runs[name] = trainer.fit().report()
        if log is not None:
            rep = runs[name]
            log(
                f"[{name}] val loss {rep['final_val_loss']:.4f}, "
                f"{rep['tokens_per_s']:,.0f} tokens/s, {rep['train_time_s']:.1f} s"
            )
    full, cf = runs["full"], runs["cuttlefish"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "quick": quick,
        "runs": runs,
        "full_ranks": full_ranks,
        "speedup_lowrank_phase": ratio(cf["tokens_per_s_lowrank_phase"], full["tokens_per_s"]),
        "speedup_end_to_end": ratio(full["train_time_s"], cf["train_time_s"]),
        "wall_time_s": time.perf_counter() - start,
    }
