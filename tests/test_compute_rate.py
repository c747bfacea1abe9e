"""bench/compute_rate.py counts W1's training FLOPs as the layer shapes give them by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from compute_rate import client_epoch_flops  # noqa: E402


def test_w1_flops_per_sample_match_the_layer_shapes():
    # forward: 2 * outputs * fan-in per layer; backward: weight gradient everywhere, input gradient except for the
    # first convolution (its input needs none), each as many FLOPs as the forward product
    conv1 = 2 * 16 * 24 * 24 * (1 * 5 * 5)
    conv2 = 2 * 32 * 8 * 8 * (16 * 5 * 5)
    fc1, fc2 = 2 * 512 * 128, 2 * 128 * 10
    per_sample = (conv1 + conv2 + fc1 + fc2) + (conv1 + 2 * conv2 + 2 * fc1 + 2 * fc2)
    assert per_sample == 6_237_696
    assert client_epoch_flops(500) == 500 * per_sample  # 15 batches of 32 and one of 20
    assert client_epoch_flops(40, batch_size=16) == 40 * per_sample
