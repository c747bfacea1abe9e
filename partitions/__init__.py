"""fedsim's partitioners, importable as `fedsim.partitions`.

Each is a `flwr_datasets.partitioner.Partitioner`. flwr-datasets' own IID, Dirichlet, shard, pathological and
natural-id partitioners are re-exported rather than rewritten.
"""

from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

__all__ = [
    "DirichletPartitioner",
    "IidPartitioner",
    "NaturalIdPartitioner",
    "Partitioner",
    "PathologicalPartitioner",
    "ShardPartitioner",
]
