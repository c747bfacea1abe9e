"""fedsim's partitioners, importable as `fedsim.partitions`.

Each is a `flwr_datasets.partitioner.Partitioner`. flwr-datasets' own IID, Dirichlet, shard, pathological and
natural-id partitioners are re-exported rather than rewritten; fedsim's own live one per module.
"""

from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

from .label_shards_with_iid import LabelShardsWithIidPartitioner
from .quantity import QuantitySkewPartitioner

__all__ = [
    "DirichletPartitioner",
    "IidPartitioner",
    "LabelShardsWithIidPartitioner",
    "NaturalIdPartitioner",
    "Partitioner",
    "PathologicalPartitioner",
    "QuantitySkewPartitioner",
    "ShardPartitioner",
]
