"""Parameter constraints of the flwr-datasets partitioners fedsim's configs name, which declare none themselves.

fedsim's own partitioners declare `_parameter_constraints` in their modules; `partitioner_constraints` gives either
kind to configuration validation, a class's own declarations over those of the flwr-datasets classes it derives from.
"""

from __future__ import annotations

from numbers import Integral

from flwr_datasets.partitioner import IidPartitioner, NaturalIdPartitioner, PathologicalPartitioner, ShardPartitioner

from fedsim.protocol.constraints import Allowed, Interval, Options, parameter_constraints

AT_LEAST_ONE = Interval(Integral, 1, None, closed="left")

FLOWER_CONSTRAINTS: dict[type, dict[str, list[Allowed]]] = {
    IidPartitioner: {},
    NaturalIdPartitioner: {"partition_by": [str]},
    PathologicalPartitioner: {
        "partition_by": [str],
        "num_classes_per_partition": [AT_LEAST_ONE],
        "class_assignment_mode": [Options({"random", "deterministic", "first-deterministic"})],
        "shuffle": [bool],
    },
    ShardPartitioner: {
        "partition_by": [str],
        "num_shards_per_partition": [AT_LEAST_ONE, None],
        "shard_size": [AT_LEAST_ONE, None],
        "keep_incomplete_shard": [bool],
        "shuffle": [bool],
    },
}


def partitioner_constraints(cls: type) -> dict[str, list[Allowed]]:
    """The constraints on partitioner class `cls`'s arguments."""
    inherited = {name: allowed for klass in reversed(cls.__mro__)
                 for name, allowed in FLOWER_CONSTRAINTS.get(klass, {}).items()}
    return {**inherited, **parameter_constraints(cls)}
