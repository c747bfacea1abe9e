"""flwr-datasets' Dirichlet label skew, with its partition step in array form so it scales to 10,000 clients."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner as FlowerDirichletPartitioner

from fedsim.protocol.constraints import Interval, InvalidParameter, Items

MAX_ATTEMPTS = 10  # flwr-datasets' limit on redraws for the minimum partition size
POSITIVE = Interval(Real, 0, None, closed="neither")


class DirichletPartitioner(FlowerDirichletPartitioner):
    """The same partitioner as `flwr_datasets.partitioner.DirichletPartitioner` (NIID-Bench's label skew: per class,
    Dirichlet(alpha) shares over clients), giving the same partitions for the same seed.

    Only the bookkeeping differs: client rows are gathered as arrays instead of growing Python lists, and a rejected
    draw (a client under `min_partition_size`) costs O(clients) instead of O(clients^2): flwr-datasets 0.6 recomputes
    the minimum size once per client while composing its warning, which takes 2 s per redraw at 10,000 clients.
    """

    _parameter_constraints = {
        # one concentration for every client, or one each
        "alpha": [POSITIVE, Items(POSITIVE, text="a list of numbers > 0, one per client")],
        "min_partition_size": [Interval(Integral, 0, None, closed="left")],
        "self_balancing": [bool],
        "shuffle": [bool],
    }

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        """A list `alpha` holds one number per partition."""
        alpha, clients = arguments.get("alpha"), arguments.get("num_partitions")
        if isinstance(alpha, list) and len(alpha) != clients:
            raise InvalidParameter("alpha", alpha, f"a number > 0, or a list of num_partitions={clients} numbers > 0")

    def _determine_partition_id_to_indices_if_needed(self) -> None:
        if self._partition_id_to_indices_determined:
            return
        self._unique_classes = sorted(self.dataset.unique(self._partition_by))
        self._avg_num_of_samples_per_partition = self.dataset.num_rows / self._num_partitions
        targets = np.asarray(self.dataset.with_format("arrow")[self._partition_by])
        rows_of_class = [np.flatnonzero(targets == label) for label in self._unique_classes]
        for attempt in range(MAX_ATTEMPTS + 1):
            pieces, sizes = self._draw(rows_of_class)
            if sizes.min() >= self._min_partition_size:
                break
            if attempt == MAX_ATTEMPTS:
                raise ValueError(f"The max number of attempts ({MAX_ATTEMPTS}) was reached. "
                                 "Please update the values of alpha and try again.")
            warnings.warn(f"min_partition_size={self._min_partition_size} not met (smallest partition: {sizes.min()}) "
                          f"at attempt {attempt}; redrawing from the Dirichlet distribution", stacklevel=1)
        partitions = {}
        for pid in range(self._num_partitions):
            rows = np.concatenate([per_class[pid] for per_class in pieces])
            if self._shuffle:
                self._rng.shuffle(rows)
            partitions[pid] = rows
        self._partition_id_to_indices = partitions
        self._partition_id_to_indices_determined = True

    def _draw(self, rows_of_class: list[np.ndarray]) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """One pass over the classes: each class's rows cut by Dirichlet shares (the draw order of flwr-datasets)."""
        sizes = np.zeros(self._num_partitions, dtype=np.int64)
        pieces = []
        for rows in rows_of_class:
            shares = self._rng.dirichlet(self._alpha)
            if self._self_balancing:
                shares = np.where(sizes > self._avg_num_of_samples_per_partition, 0.0, shares)
                shares = shares / np.cumsum(shares)[-1]  # a left-to-right sum, as flwr-datasets' sum() over a dict
            cuts = (np.cumsum(shares) * len(rows)).astype(int)[:-1]
            per_class = np.split(rows, cuts)
            sizes += np.diff(np.concatenate([[0], cuts, [len(rows)]]))
            pieces.append(per_class)
        return pieces, sizes
