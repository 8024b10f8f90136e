"""``lowrank_kernels.export.decompose``: an exported factorized model that loads and runs
in a process that never imports this package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.export import decompose

LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys, torch
    program = torch.export.load(sys.argv[1])
    io = torch.load(sys.argv[2])
    out = program.module()(io["x"])
    assert "lowrank_kernels" not in sys.modules, "the package was imported"
    torch.testing.assert_close(out, io["y"], rtol=1e-5, atol=1e-5)
    print("OK", tuple(out.shape))
    """
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = lrk.LowRankConv2d(3, 8, 3, 2, padding=1)
        self.fc = lrk.LowRankLinear(8 * 4 * 4, 16, 4)
        self.adapter = lrk.LoRALinear(16, 10, 2)
        with torch.no_grad():
            self.adapter.B.normal_()  # a non-zero update, so the LoRA path matters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.adapter(torch.relu(self.fc(h)))


def _run_clean(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_decomposed_program_runs_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 4, 4)
    program = torch.export.export(model, (x,))
    assert "lowrank" in str(program.graph)  # the op is kept by export
    plain = decompose(program)
    assert "lowrank" not in str(plain.graph)
    torch.testing.assert_close(plain.module()(x), model(x))
    torch.export.save(plain, tmp_path / "plain.pt2")
    torch.export.save(program, tmp_path / "opaque.pt2")
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    ok = _run_clean(str(tmp_path / "plain.pt2"), str(tmp_path / "io.pt"))
    assert ok.returncode == 0 and "OK (2, 10)" in ok.stdout, ok.stderr[-3000:]
    # Without decompose the same file cannot be loaded there: what decompose is for.
    opaque = _run_clean(str(tmp_path / "opaque.pt2"), str(tmp_path / "io.pt"))
    assert opaque.returncode != 0 and "lowrank" in opaque.stderr


def test_decompose_keeps_the_intermediate_rounding_of_16_bit_inputs():
    """Z = x·V is rounded to bf16 before Z·U, as in the torch backend and the kernels."""
    torch.manual_seed(0)
    layer = lrk.LowRankLinear(64, 32, 8, dtype=torch.bfloat16).eval()
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    plain = decompose(torch.export.export(layer, (x,)))
    z = (x @ layer.V).to(torch.bfloat16)  # matmul rounds to bf16 on its own
    expected = torch.addmm(layer.bias, z, layer.U)
    torch.testing.assert_close(plain.module()(x), expected, rtol=0, atol=0)


def test_decompose_refuses_what_is_not_an_exported_program():
    with pytest.raises(TypeError, match=r"program must be a torch\.export\.ExportedProgram"):
        decompose(nn.Linear(2, 2))
