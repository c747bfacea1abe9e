"""fedsim's partitioners, importable as `fedsim.partitions`.

Each is a `flwr_datasets.partitioner.Partitioner`. flwr-datasets' own IID, shard, pathological and natural-id
partitioners are re-exported rather than rewritten; its Dirichlet partitioner is subclassed only to make its
bookkeeping scale (same partitions). fedsim's own live one per module. What configuration validation checks of a
partitioner's arguments is declared beside it: `_parameter_constraints` (and `check_arguments` for rules across
arguments) on fedsim's classes, a table in `flower_constraints.py` for flwr-datasets' own. Like strategies, this
package imports nothing from fedsim but `fedsim.protocol`.

The partitioners are imported on first use (PEP 562): `import fedsim` maps this package, and flwr-datasets,
scikit-learn and scipy would otherwise load with every ClientApp start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.protocol.lazy import lazy_attributes

if TYPE_CHECKING:
    from flwr_datasets.partitioner import (
        IidPartitioner,
        NaturalIdPartitioner,
        Partitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    from fedsim.protocol.errors import PartitionImpossible

    from .dirichlet import DirichletPartitioner
    from .embedding import EmbeddingPartitioner
    from .label_clusters import LabelClusterPartitioner
    from .label_shards_with_iid import LabelShardsWithIidPartitioner
    from .quantity import QuantitySkewPartitioner
    from .semantic import SemanticPartitioner
    from .synergy import SynergyPartitioner

__all__ = [
    "DirichletPartitioner",
    "EmbeddingPartitioner",
    "IidPartitioner",
    "LabelClusterPartitioner",
    "LabelShardsWithIidPartitioner",
    "NaturalIdPartitioner",
    "PartitionImpossible",
    "Partitioner",
    "PathologicalPartitioner",
    "QuantitySkewPartitioner",
    "SemanticPartitioner",
    "ShardPartitioner",
    "SynergyPartitioner",
]

# public name -> the module that defines it
_LAZY = {
    "IidPartitioner": "flwr_datasets.partitioner",
    "NaturalIdPartitioner": "flwr_datasets.partitioner",
    "Partitioner": "flwr_datasets.partitioner",
    "PathologicalPartitioner": "flwr_datasets.partitioner",
    "ShardPartitioner": "flwr_datasets.partitioner",
    "PartitionImpossible": "fedsim.protocol.errors",
    "DirichletPartitioner": ".dirichlet",
    "EmbeddingPartitioner": ".embedding",
    "LabelClusterPartitioner": ".label_clusters",
    "LabelShardsWithIidPartitioner": ".label_shards_with_iid",
    "QuantitySkewPartitioner": ".quantity",
    "SemanticPartitioner": ".semantic",
    "SynergyPartitioner": ".synergy",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
