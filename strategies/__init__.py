"""fedsim's aggregation strategies, importable as `fedsim.strategies`.

Every strategy is a Flower message-based strategy (`flwr.serverapp.strategy.Strategy`), so it drops into any
Flower `ServerApp`. One module per strategy; `common` and `stragglers` hold what they share.
"""

from flwr.serverapp.strategy import Strategy

from .fedce import FedCE
from .fairfed import FairFed
from .feddisco import FedDisco, discrepancy, disco_weights
from .fedavg import FedAvg
from .fedlaw import FedLAW
from .fedprox import FedProx
from .qffl import QFFL

__all__ = ["FairFed", "FedAvg", "FedCE", "FedDisco", "FedLAW", "FedProx", "QFFL", "Strategy", "discrepancy", "disco_weights"]
