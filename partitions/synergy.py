"""The "synergy" split of Hamman & Dutta (ICLR 2024): clients that hold the rows where the sensitive attribute equals
the label and clients that hold the rows where it differs.

A model that predicts the label then depends on Z at every client, one way at one kind and the other way at the
other, and the two cancel in the pooled data: local disparity without global disparity, which the partial
information decomposition (`fedsim.disparity`) calls masked (synergistic) disparity. The reference
(`utils.py: split_client_data`, `shuffle_clients_data`) has two clients and then exchanges 1% of their rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from fedsim.protocol.constraints import Interval, InvalidParameter
from fedsim.protocol.errors import PartitionImpossible

from .base import PrecomputedPartitioner

KINDS = ("z == y", "z != y")


class SynergyPartitioner(PrecomputedPartitioner):
    """Even clients share the rows with sensitive attribute = label ((Z, Y) ∈ {(0,0), (1,1)}), odd clients the rows
    where they differ ({(0,1), (1,0)}), dealt round-robin from a seeded shuffle, so that clients of a kind get equal
    numbers of rows (±1) and the same (Z, Y) mix. Then each even client 2i exchanges rows with odd client 2i+1 (with
    an odd number of clients, the last even client with client 1 as well): ⌊swap · the smaller client's rows⌋ rows
    from each, drawn without replacement, as the reference exchanges ⌊0.01 · min(n_0, n_1)⌋ between its two clients.
    Client sizes do not change.

    Needs a binary label (`partition_by`) and a binary sensitive attribute column (`sensitive`); fair_synthetic's and
    adult's rows carry both. Deviation from the reference: it exchanges rows of the test split as well; fedsim's
    test split is the server's and is not partitioned.
    """

    requires_sensitive_attribute: ClassVar[bool] = True
    _parameter_constraints = {
        "partition_by": [str],
        "sensitive": [str],
        "swap": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, num_partitions: int, partition_by: str = "label", sensitive: str = "sensitive",
                 swap: float = 0.01, seed: int | None = 42) -> None:
        super().__init__(num_partitions)
        if num_partitions < 2:
            raise ValueError(f"num_partitions={num_partitions}: SynergyPartitioner needs at least 2 clients")
        if not 0 <= swap <= 1:
            raise ValueError(f"swap={swap}: a fraction in [0, 1]")
        self.partition_by, self.sensitive, self.swap, self.seed = partition_by, sensitive, swap, seed

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        clients = arguments.get("num_partitions")
        if isinstance(clients, Integral) and clients < 2:
            raise InvalidParameter("num_partitions", clients, "at least 2: one client of each kind (z == y, z != y)")

    def _binary_column(self, name: str, role: str) -> np.ndarray:
        if name not in self.dataset.column_names:
            raise PartitionImpossible(
                f"the synergy split needs a {role} column {name!r}; the data has {', '.join(self.dataset.column_names)}"
                " (dataset=fair_synthetic and dataset=adult carry `sensitive`)")
        values = np.asarray(self.dataset[name])
        if not np.isin(values, (0, 1)).all():
            raise PartitionImpossible(f"the synergy split needs a binary {role} column; {name!r} holds "
                                      f"{np.unique(values)[:5].tolist()}...")
        return values.astype(np.int64)

    def _compute_partition_indices(self) -> list[np.ndarray]:
        sensitive = self._binary_column(self.sensitive, "sensitive attribute")
        labels = self._binary_column(self.partition_by, "label")
        rng = np.random.default_rng(self.seed)
        clients = np.arange(self.num_partitions)
        parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * self.num_partitions
        for kind, (name, rows) in enumerate(zip(KINDS, (sensitive == labels, sensitive != labels), strict=True)):
            members = clients[clients % 2 == kind]
            pool = rng.permutation(np.flatnonzero(rows))
            if len(pool) < len(members):
                raise PartitionImpossible(f"only {len(pool)} rows have {name}, for {len(members)} clients of that "
                                          "kind; use fewer clients")
            # stratified by the two (Z, Y) cells of the kind: deal each cell's shuffled rows in turn
            pool = pool[np.argsort(labels[pool], kind="stable")]
            for position, client in enumerate(members):
                parts[client] = pool[position :: len(members)]
        return [np.sort(rows) for rows in self._exchange(parts, rng)]

    def _exchange(self, parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Each even client 2i swaps ⌊swap · min size⌋ rows with odd client 2i+1 (the last even one of an odd
        count with client 1); a client's rows given away are drawn once, so a client in two pairs gives distinct
        rows to each."""
        count = self.num_partitions
        pairs = [(even, even + 1) for even in range(0, count - 1, 2)]
        if count % 2:
            pairs.append((count - 1, 1))
        order = [rng.permutation(len(rows)) for rows in parts]  # each client's rows in the order it gives them
        given = [0] * count
        swapped = [rows.copy() for rows in parts]
        for left, right in pairs:
            size = min(int(self.swap * min(len(parts[left]), len(parts[right]))),
                       len(parts[left]) - given[left], len(parts[right]) - given[right])
            mine = order[left][given[left] : given[left] + size]
            theirs = order[right][given[right] : given[right] + size]
            given[left] += size
            given[right] += size
            swapped[left][mine], swapped[right][theirs] = parts[right][theirs], parts[left][mine]
        return swapped
