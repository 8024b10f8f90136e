"""Plots and the README's Performance section, generated from the committed CSVs.

Reads every ``benchmarks/results/<device>/kernels.csv``; for each device and
(dtype, mode) draws, per (K, N), the speedup of the fused low-rank op over
``torch_chain`` and over ``dense`` against M (one line per rank) and the fraction of
the roofline floor, saved as PNGs beside the CSV; and rewrites the README between
``<!-- perf:start -->`` and ``<!-- perf:end -->`` with a speedup table and links.
Nothing is typed by hand: rerun this after committing new CSV rows.

    python benchmarks/report.py                # plots + README section
    python benchmarks/report.py --no-plots     # README section only
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
README = ROOT.parent / "README.md"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"
FUSED = ("triton", "cuda")

Row = dict[str, str]


def load(path: Path) -> list[Row]:
    """The newest row of each (provider, mode, dtype, shape) in a kernels.csv."""
    latest: dict[tuple, Row] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (
                row["provider"],
                row["mode"],
                row["dtype"],
                row["M"],
                row["K"],
                row["N"],
                row["r"],
            )
            if key not in latest or row["timestamp"] >= latest[key]["timestamp"]:
                latest[key] = row
    return list(latest.values())


def speedups(rows: list[Row], provider: str, baseline: str) -> dict[tuple, float]:
    """``baseline time / provider time`` per (mode, dtype, M, K, N, r) present in both."""
    times = {(r["provider"], r["mode"], r["dtype"], int(r["M"]), int(r["K"]), int(r["N"]),
              int(r["r"])): float(r["median_ms"]) for r in rows}  # fmt: skip
    out = {}
    for (prov, *shape), t in times.items():
        base = times.get((baseline, *shape))
        if prov == provider and base is not None:
            out[tuple(shape)] = base / t
    return out


def plot_device(rows: list[Row], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fused = [p for p in FUSED if any(r["provider"] == p for r in rows)]
    groups = sorted({(r["dtype"], r["mode"], int(r["K"]), int(r["N"])) for r in rows})
    for provider in fused:
        vs_chain = speedups(rows, provider, "torch_chain")
        vs_dense = speedups(rows, provider, "dense")
        for dtype, mode, K, N in groups:
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
            ranks = sorted(
                {
                    int(r["r"])
                    for r in rows
                    if (r["dtype"], r["mode"], int(r["K"]), int(r["N"])) == (dtype, mode, K, N)
                }
            )
            for rank in ranks:
                for ax, table in ((axes[0], vs_chain), (axes[1], vs_dense)):
                    pts = sorted(
                        (M, s)
                        for (md, dt, M, k, n, rr), s in table.items()
                        if (md, dt, k, n, rr) == (mode, dtype, K, N, rank)
                    )
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", label=f"r={rank}")
                pts = sorted(
                    (int(r["M"]), float(r["roofline_fraction"]))
                    for r in rows
                    if (r["provider"], r["mode"], r["dtype"], int(r["K"]), int(r["N"]), int(r["r"]))
                    == (provider, mode, dtype, K, N, rank)
                )
                if pts:
                    axes[2].plot(*zip(*pts, strict=True), marker="o", label=f"r={rank}")
            titles = ("speedup over torch_chain", "speedup over dense", "fraction of roofline")
            for ax, title in zip(axes, titles, strict=True):
                ax.set_xscale("log", base=2)
                ax.set_xlabel("M")
                ax.set_title(title)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7)
            for ax in axes[:2]:
                ax.axhline(1.0, color="k", lw=0.8)
            fig.suptitle(f"{provider} {mode} {dtype} K={K} N={N} — {rows[0]['device_name']}")
            fig.tight_layout()
            path = out_dir / f"{provider}_{mode}_{dtype}_K{K}_N{N}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    return written


def summary_table(rows: list[Row]) -> list[str]:
    """Markdown lines: per fused provider, mode and dtype, speedup medians and ranges."""
    lines = ["| provider | mode | dtype | shapes | vs torch_chain: median (min–max) "
             "| vs dense: median (min–max) | median roofline fraction |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for provider in FUSED:
        vs_chain = speedups(rows, provider, "torch_chain")
        vs_dense = speedups(rows, provider, "dense")
        for mode, dtype in sorted({(k[0], k[1]) for k in vs_chain}):
            chain = [s for k, s in vs_chain.items() if k[:2] == (mode, dtype)]
            dense = [s for k, s in vs_dense.items() if k[:2] == (mode, dtype)]
            fractions = [
                float(r["roofline_fraction"])
                for r in rows
                if (r["provider"], r["mode"], r["dtype"]) == (provider, mode, dtype)
            ]

            def fmt(xs: list[float]) -> str:
                return f"{statistics.median(xs):.2f}× ({min(xs):.2f}–{max(xs):.2f})" if xs else "–"

            lines.append(
                f"| {provider} | {mode} | {dtype} | {len(chain)} | {fmt(chain)} "
                f"| {fmt(dense)} | {statistics.median(fractions):.2f} |"
            )
    return lines


def performance_section(
    result_dirs: list[Path], plots: dict[Path, list[Path]], readme_dir: Path
) -> str:
    def rel(path: Path) -> str:
        return os.path.relpath(path, readme_dir)

    out = [START, ""]
    if not result_dirs:
        out.append("No benchmark results are committed yet (`benchmarks/results/` is empty).")
    for d in result_dirs:
        rows = load(d / "kernels.csv")
        first = rows[0]
        out.append(f"### {first['device_name']} ({first['device_kind'].upper()} figures)")
        out.append("")
        out.append(
            f"torch {first['torch']}, triton {first['triton']}, CUDA {first['cuda']}, "
            f"commit {first['git_commit']}, {first['timestamp']}; "
            f"`{first['command']}`. Raw rows: `{rel(d / 'kernels.csv')}`."
        )
        out.append("")
        if any(r["provider"] in FUSED for r in rows):
            out.extend(summary_table(rows))
        else:
            out.append(
                "No fused-kernel rows on this device (the Triton/CUDA kernels run on "
                "GPUs; CPU rows compare the PyTorch baselines only)."
            )
        for png in plots.get(d, []):
            out.append(f"![{png.stem}]({rel(png)})")
        out.append("")
        e2e = d / "e2e.md"
        if e2e.exists():
            # the end-to-end table as e2e.py wrote it, under this device's heading
            out.append("End-to-end training (`benchmarks/e2e.py`):")
            out.extend(e2e.read_text().splitlines()[1:])
            out.append("")
    out.append(END)
    return "\n".join(out)


def update_readme(section: str, readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: missing the {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + section + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    result_dirs = sorted(p.parent for p in args.results.glob("*/kernels.csv"))
    plots: dict[Path, list[Path]] = defaultdict(list)
    if not args.no_plots:
        for d in result_dirs:
            plots[d] = plot_device(load(d / "kernels.csv"), d)
    update_readme(performance_section(result_dirs, plots, args.readme.parent), args.readme)
    print(f"README performance section rebuilt from {len(result_dirs)} result folder(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
