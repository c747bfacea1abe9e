"""fedsim's partitioners, importable as `fedsim.partitions`.

Each is a `flwr_datasets.partitioner.Partitioner`. flwr-datasets' own IID, shard, pathological and natural-id
partitioners are re-exported rather than rewritten; its Dirichlet partitioner is subclassed only to make its
bookkeeping scale (same partitions). fedsim's own live one per module.
"""

from flwr_datasets.partitioner import (
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

from .cluster_mixture import PartitionImpossible
from .dirichlet import DirichletPartitioner
from .embedding import EmbeddingPartitioner
from .label_shards_with_iid import LabelShardsWithIidPartitioner
from .quantity import QuantitySkewPartitioner
from .semantic import SemanticPartitioner

__all__ = [
    "DirichletPartitioner",
    "EmbeddingPartitioner",
    "IidPartitioner",
    "LabelShardsWithIidPartitioner",
    "NaturalIdPartitioner",
    "PartitionImpossible",
    "Partitioner",
    "PathologicalPartitioner",
    "QuantitySkewPartitioner",
    "SemanticPartitioner",
    "ShardPartitioner",
]
