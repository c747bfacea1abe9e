"""How long partitioning takes at scale (issue 4's goals), median of several runs, as a table.

- Dirichlet label skew (fedsim's DirichletPartitioner: flwr-datasets' partitions, array bookkeeping; read through
  `partition_indices`) over 1,000,000 labels of 10 classes into 10,000 clients (goal: under 5 s), once with no
  minimum client size (a single draw) and once with the default minimum of 10 (redrawn until every client has 10);
- EmbeddingPartitioner on 60,000 x 512 embeddings (10 Gaussian blobs) into 100 clients, PCA to 50 and mini-batch
  k-means into 10 clusters (goal: under 30 s);
- SemanticPartitioner on the same embeddings (PCA to 32, a full-covariance Gaussian mixture per label), 10 clients.
`--flower-reference` also times, once each, flwr-datasets' own DirichletPartitioner read through `partition_indices`,
and a plain flwr-datasets loop (`load_partition` for every client on the default data set format).

    python bench/partition_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner as FlowerDirichletPartitioner
from rich.console import Console
from rich.table import Table

from fedsim.data import partition_indices
from fedsim.partitions import DirichletPartitioner, EmbeddingPartitioner, SemanticPartitioner


def labels_data(rows: int, classes: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"label": np.random.default_rng(0).integers(0, classes, rows)})


def embedding_data(rows: int, dim: int, classes: int) -> datasets.Dataset:
    """Gaussian blobs in `dim` dimensions with labels that follow the blobs loosely (80% agree)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (classes, dim)).astype(np.float32)
    blob = rng.integers(0, classes, rows)
    vectors = centres[blob] + rng.normal(0, 1, (rows, dim)).astype(np.float32)
    labels = np.where(rng.random(rows) < 0.8, blob, rng.integers(0, classes, rows))
    return datasets.Dataset.from_dict({"x": vectors, "label": labels})


def timed(work: Callable[[], list[np.ndarray]], repeats: int, expected_rows: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        parts = work()
        times.append(time.perf_counter() - start)
        assert sum(len(rows) for rows in parts) == expected_rows
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flower-reference", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    cache = tempfile.mkdtemp(prefix="fedsim_bench_cache_")
    console = Console()
    table = Table(title=f"partitioning speed, median of {args.repeats} ({os.cpu_count()} CPUs)")
    for column in ("workload", "goal", "median s", "runs s"):
        table.add_column(column, justify="right" if column != "workload" else "left")

    labels = labels_data(1_000_000, 10)
    for minimum in (0, 10):
        median, runs = timed(
            lambda minimum=minimum: partition_indices(
                labels, DirichletPartitioner(10_000, "label", alpha=0.5, min_partition_size=minimum, seed=0)
            ),
            args.repeats, len(labels),
        )
        table.add_row(f"Dirichlet(0.5), 1M labels -> 10k clients, min size {minimum}", "< 5", f"{median:.2f}",
                      ", ".join(f"{t:.2f}" for t in runs))
        console.print(f"done: Dirichlet min size {minimum}: {median:.2f} s")
    if args.flower_reference:
        start = time.perf_counter()
        flower = FlowerDirichletPartitioner(10_000, "label", alpha=0.5, min_partition_size=10, seed=0)
        parts = partition_indices(labels, flower)
        assert sum(len(rows) for rows in parts) == len(labels)
        table.add_row("  same, flwr-datasets' DirichletPartitioner", "", f"{time.perf_counter() - start:.2f}", "1 run")
        start = time.perf_counter()
        plain = FlowerDirichletPartitioner(10_000, "label", alpha=0.5, min_partition_size=10, seed=0)
        plain.dataset = labels
        assert sum(len(plain.load_partition(pid)) for pid in range(10_000)) == len(labels)
        table.add_row("  same, plain flwr-datasets load_partition loop", "", f"{time.perf_counter() - start:.2f}",
                      "1 run")

    embeddings = embedding_data(60_000, 512, 10)
    median, runs = timed(
        lambda: partition_indices(embeddings,
                                  EmbeddingPartitioner(100, alpha=0.5, num_clusters=10, cache_dir=cache, seed=0)),
        args.repeats, len(embeddings),
    )
    table.add_row("EmbeddingPartitioner, 60k x 512 -> 100 clients", "< 30", f"{median:.2f}",
                  ", ".join(f"{t:.2f}" for t in runs))
    console.print(f"done: embedding {median:.2f} s")
    median, runs = timed(
        lambda: partition_indices(embeddings, SemanticPartitioner(10, cache_dir=cache, seed=0)), args.repeats,
        len(embeddings)
    )
    table.add_row("SemanticPartitioner, 60k x 512 -> 10 clients", "", f"{median:.2f}",
                  ", ".join(f"{t:.2f}" for t in runs))
    console.print(table)
    console.print("The embedding runs after the first read their embeddings from the on-disk cache, as a sweep does; "
                  "the first run's time includes writing it.")


if __name__ == "__main__":
    main()
