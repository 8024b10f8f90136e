"""The ``lowrank-kernels`` command line."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from collections.abc import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowrank-kernels",
        description="Fused low-rank layer kernels for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions, the GPU and the available backends")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowrank-kernels`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
