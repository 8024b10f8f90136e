"""End-to-end benchmark: the same token budget trained full-rank, fixed low-rank and Cuttlefish.

GPU preset (``gpt2-small``): a GPT-2-small-shaped character model (12 layers,
d = 768, 12 heads, sequence 1024, random init) trained in bf16 on the text that
ships with Python (``pydoc_data.topics``), methods ``full``, ``fixed`` (r = d/4) and
``cuttlefish``. Per method: tokens/s, wall time, peak memory, final validation
loss, parameters, and decode latency (one token, batch 1 and 8). Rows are appended
to ``benchmarks/results/<device>/e2e.csv`` (with the same provenance columns as the
kernel benchmark) and a Markdown table is written beside it (``e2e.md``).

CPU preset (``cpu``): a tiny model and budget for users without a GPU and for the CI
smoke test — CPU figures, labelled as such.

    python benchmarks/e2e.py                      # gpt2-small on the GPU
    python benchmarks/e2e.py --device cpu --preset cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import comma_list, provenance, results_dir, write_rows

from lowrank_kernels.ops.timing import median_ms
from lowrank_kernels.train.trainer import TrainConfig, Trainer

PRESETS: dict[str, dict] = {
    "gpt2-small": {
        "model_kwargs": {"n_layer": 12, "n_head": 12, "d_model": 768},
        "block_size": 1024,
        "batch_size": 8,
        "steps": 600,
    },
    "cpu": {
        "model_kwargs": {"n_layer": 2, "n_head": 2, "d_model": 64},
        "block_size": 32,
        "batch_size": 8,
        "steps": 30,
    },
}
METHODS = ("full", "fixed", "cuttlefish")
CSV_FIELDS = [
    "method", "preset", "steps", "tokens", "params", "train_time_s", "tokens_per_s",
    "speedup_vs_full", "peak_mem_mb", "final_val_loss", "val_loss_vs_full",
    "decode_ms_b1", "decode_ms_b8", "switch_step", "mean_rank",
    "device_name", "device_kind", "torch", "triton", "cuda", "package_version", "git_commit",
    "timestamp", "command",
]  # fmt: skip


def config_for(method: str, preset: dict, steps: int, device: str) -> TrainConfig:
    d_model = preset["model_kwargs"]["d_model"]
    strategy_kwargs = {"fixed": {"rank": d_model // 4}, "cuttlefish": {}}.get(method, {})
    return TrainConfig(
        model="gpt",
        method=method,
        steps=steps,
        device=device,
        eval_every=steps,  # one evaluation, at the end: it is not part of the timing
        task_kwargs={
            "batch_size": preset["batch_size"],
            "block_size": preset["block_size"],
            "model_kwargs": preset["model_kwargs"],
        },
        strategy_kwargs=strategy_kwargs,
    )


def decode_latency_ms(model: torch.nn.Module, batch: int, device: torch.device) -> float:
    """One forward of a single new token per sequence: the linear layers at M = batch."""
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
    model.eval()
    with (
        torch.no_grad(),
        torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
    ):
        ms = median_ms(lambda: model(tokens), device, warmup=3, repeats=20)
    model.train()
    return ms


def run_method(method: str, args: argparse.Namespace) -> dict[str, object]:
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    config = config_for(method, preset, args.steps or preset["steps"], args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(config, progress=False, log=lambda *a, **k: None).fit()
    report = trainer.report()
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    )
    ranks = report["ranks"] or {}
    return {
        "method": method,
        "preset": args.preset,
        "steps": report["steps"],
        "tokens": report["steps"] * trainer.task.items_per_batch,
        "params": report["params_after"],
        "train_time_s": round(report["train_time_s"], 3),
        "tokens_per_s": round(report["tokens_per_s"], 1),
        "peak_mem_mb": round(peak, 1),
        "final_val_loss": round(report["final_val_loss"], 4),
        "decode_ms_b1": round(decode_latency_ms(trainer.model, 1, device), 4),
        "decode_ms_b8": round(decode_latency_ms(trainer.model, 8, device), 4),
        "switch_step": report["switch_step"],
        "mean_rank": round(sum(ranks.values()) / len(ranks), 1) if ranks else "",
    }


def markdown(rows: list[dict[str, object]], meta: dict[str, str]) -> str:
    lines = [
        f"# End-to-end: {meta['device_name']} ({meta['device_kind'].upper()} figures)",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, commit "
        f"{meta['git_commit']}, {meta['timestamp']}; `{meta['command']}`",
        "",
        "| method | params | tokens/s | speedup vs full | train s | peak MB | val loss "
        "| val loss vs full | decode ms b1 | decode ms b8 | switch step | mean rank |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['params']:,} | {r['tokens_per_s']:,} | {r['speedup_vs_full']} "
            f"| {r['train_time_s']} | {r['peak_mem_mb']} | {r['final_val_loss']} "
            f"| {r['val_loss_vs_full']} | {r['decode_ms_b1']} | {r['decode_ms_b8']} "
            f"| {r['switch_step']} | {r['mean_rank']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="default: gpt2-small on a GPU, cpu on the CPU",
    )
    parser.add_argument("--steps", type=int, default=None, help="override the preset's budget")
    parser.add_argument("--methods", type=comma_list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: benchmarks/results/<device>/"
    )
    args = parser.parse_args(argv)
    args.preset = args.preset or ("gpt2-small" if args.device.startswith("cuda") else "cpu")

    device = torch.device(args.device)
    meta = provenance(device)
    # One short untimed run first: allocator, kernel caches and dispatch measurements warm
    # up there, so the first timed method is not charged for them.
    Trainer(config_for("full", PRESETS[args.preset], 3, args.device), progress=False,
            log=lambda *a, **k: None).fit()  # fmt: skip
    rows = []
    for method in args.methods:
        row = run_method(method, args)
        print(
            f"{method:>11}: {row['tokens_per_s']:,} tokens/s, val loss {row['final_val_loss']}, "
            f"params {row['params']:,}"
        )
        rows.append(row)
    full = next((r for r in rows if r["method"] == "full"), None)
    for r in rows:
        r["speedup_vs_full"] = round(r["tokens_per_s"] / full["tokens_per_s"], 3) if full else ""
        r["val_loss_vs_full"] = (round(r["final_val_loss"] / full["final_val_loss"], 4)
                                 if full else "")  # fmt: skip
        r.update(meta)

    out_dir = args.out_dir or results_dir(meta["device_name"])
    write_rows(rows, out_dir / "e2e.csv", CSV_FIELDS)
    (out_dir / "e2e.md").write_text(markdown(rows, meta))
    print(f"# table in {out_dir / 'e2e.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
