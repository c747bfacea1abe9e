"""fedsim's aggregation strategies, importable as `fedsim.strategies`.

Every strategy is a Flower message-based strategy (`flwr.serverapp.strategy.Strategy`), so it drops into any
Flower `ServerApp`. One module per strategy, each holding its server half, its client requests and its declarations
(`fedsim.protocol`); `base` is the aggregation sequence they share, `asynchronous` the base of the asynchronous
ones, `common`, `stragglers` and `client_requests` the helpers.

The strategies are imported on first use (PEP 562): `import fedsim` maps this package, and the ClientApp, started
once per message in deployment, imports only the configured strategy's module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import Strategy

from fedsim.protocol.lazy import lazy_attributes

if TYPE_CHECKING:
    from .agnosticfair import AgnosticFair
    from .base import WeightedAggregation
    from .fairequal import FairYetEqual
    from .fairfed import FairFed
    from .fedasync import FedAsync
    from .fedavg import FedAvg
    from .fedbuff import FedBuff
    from .fedce import FedCE
    from .fedcollab import FedCollab
    from .feddisco import FedDisco, disco_weights, discrepancy
    from .fedlaw import FedLAW
    from .fedprox import FedProx
    from .flag import FlagAggregator
    from .ida import IDA
    from .qffl import QFFL
    from .robust import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
    from .unstale import Unstale

__all__ = ["IDA", "QFFL", "AgnosticFair", "Bulyan", "FairFed", "FairYetEqual", "FedAsync", "FedAvg", "FedBuff", "FedCE",
           "FedCollab", "FedDisco", "FedLAW", "FedMedian", "FedProx", "FedTrimmedAvg", "FlagAggregator", "Krum",
           "MultiKrum", "Strategy", "Unstale", "WeightedAggregation", "discrepancy", "disco_weights"]

# public name -> the module that defines it
_LAZY = {
    "FairFed": ".fairfed",
    "FedAvg": ".fedavg",
    "FedCE": ".fedce",
    "FedDisco": ".feddisco",
    "discrepancy": ".feddisco",
    "disco_weights": ".feddisco",
    "FedLAW": ".fedlaw",
    "FedProx": ".fedprox",
    "QFFL": ".qffl",
    "IDA": ".ida",
    "FlagAggregator": ".flag",
    "FedCollab": ".fedcollab",
    "AgnosticFair": ".agnosticfair",
    "FairYetEqual": ".fairequal",
    "FedAsync": ".fedasync",
    "FedBuff": ".fedbuff",
    "Unstale": ".unstale",
    "Krum": ".robust",
    "MultiKrum": ".robust",
    "Bulyan": ".robust",
    "FedMedian": ".robust",
    "FedTrimmedAvg": ".robust",
    "WeightedAggregation": ".base",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
