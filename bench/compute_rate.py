"""Arithmetic of workload W1 and the device's matrix-multiply ceiling: what turns seconds per round into TFLOP/s.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one forward and backward pass of fedsim's W1
CNN per minibatch size a client's epoch uses (convolutions and matmuls; element-wise work and the SGD update are
not counted, as is usual for model FLOPs). The ceiling is the best of several float32 `a @ b` products of n x n
matrices on the device, with TF32 off (as fedsim trains: PyTorch's default float32 precision) and on (what an
H100's tensor cores reach in float32 with TF32).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedsim.models import CNN


def w1_model() -> torch.nn.Module:
    return CNN([1, 28, 28], 10, channels=(16, 32), hidden=128, padding=0)


def client_epoch_flops(per_client: int, batch_size: int = 32) -> int:
    """FLOPs of one client's local epoch of W1: full minibatches and the last, smaller one."""
    model = w1_model()

    def step(size: int) -> int:
        inputs, labels = torch.randn(size, 1, 28, 28), torch.randint(0, 10, (size,))
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        return counter.get_total_flops()

    full, rest = divmod(per_client, batch_size)
    return full * step(batch_size) + (step(rest) if rest else 0)


def matmul_tflops(device: torch.device, size: int | None = None, tf32: bool = False, repeats: int = 10) -> float:
    """Best measured float32 matmul rate on `device` in TFLOP/s (n = 8192 on CUDA, 2048 on CPU)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * size**3 / best / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
