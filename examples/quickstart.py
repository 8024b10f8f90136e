"""Quick start: swap an nn.Linear for a LowRankLinear and check what changed.

Run: python examples/quickstart.py
"""

import torch
from torch import nn

import lowrank_kernels as lrk

torch.manual_seed(0)
# A layer whose weight is nearly low rank, as trained layers tend to be (Cuttlefish).
dense = nn.Linear(512, 512)
with torch.no_grad():
    dense.weight.copy_(torch.randn(512, 32) @ torch.randn(32, 512) / 512 + 0.01 * dense.weight)

low = lrk.LowRankLinear.from_linear(dense, rank=32)  # truncated SVD, sqrt(S) split
x = torch.randn(8, 128, 512)
y_dense, y_low = dense(x), low(x)
rel = ((y_low - y_dense).norm() / y_dense.norm()).item()
params = lambda m: sum(p.numel() for p in m.parameters())
print(f"rank 32 of 512: params {params(dense)} -> {params(low)}, relative output error {rel:.2e}")

y_low.sum().backward()  # gradients for V, U and bias through the low-rank op
print(f"grad shapes: V {tuple(low.V.grad.shape)}, U {tuple(low.U.grad.shape)}")
print(f"backend for CPU tensors: {lrk.get_backend()} -> {lrk.ops.resolve_backend(x.device).name}")
