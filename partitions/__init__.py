"""fedsim's partitioners, importable as `fedsim.partitions`.

Each is a `flwr_datasets.partitioner.Partitioner`. flwr-datasets' own IID, shard, pathological and natural-id
partitioners are re-exported rather than rewritten; its Dirichlet partitioner is subclassed only to make its
bookkeeping scale (same partitions). fedsim's own live one per module.

The partitioners are imported on first use (PEP 562): `import fedsim` maps this package, and flwr-datasets,
scikit-learn and scipy would otherwise load with every ClientApp start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.lazy import lazy_attributes

if TYPE_CHECKING:
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

# public name -> the module that defines it
_LAZY = {
    "IidPartitioner": "flwr_datasets.partitioner",
    "NaturalIdPartitioner": "flwr_datasets.partitioner",
    "Partitioner": "flwr_datasets.partitioner",
    "PathologicalPartitioner": "flwr_datasets.partitioner",
    "ShardPartitioner": "flwr_datasets.partitioner",
    "PartitionImpossible": ".cluster_mixture",
    "DirichletPartitioner": ".dirichlet",
    "EmbeddingPartitioner": ".embedding",
    "LabelShardsWithIidPartitioner": ".label_shards_with_iid",
    "QuantitySkewPartitioner": ".quantity",
    "SemanticPartitioner": ".semantic",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
