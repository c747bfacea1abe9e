"""fedsim's aggregation strategies, importable as `fedsim.strategies`.

Every strategy is a Flower message-based strategy (`flwr.serverapp.strategy.Strategy`), so it drops into any
Flower `ServerApp`. Flower's own strategies are re-exported here so that configs and users find them in one place.
"""

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

__all__ = ["FedAvg", "FedProx", "Strategy"]
