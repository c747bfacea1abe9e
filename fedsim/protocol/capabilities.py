"""What a plug-in can do beyond its upstream contract, declared on the plug-in and read by fedsim's core.

Two kinds:
- instance capabilities, `typing.Protocol`s checked with `isinstance` at run time: a strategy that reports its
  round (`ReportsRound`, `ReportsClients`), runs a stage before training (`PreparesFederation`) or gives nodes
  models of their own (`PersonalisesModels`), an engine Grid that keeps node state in this process
  (`KeepsNodeState`), a partitioner that computes every partition at once (`PrecomputesPartitions`) or reports
  clusters (`ReportsClusters`);
- class declarations of a strategy, read before it is built (config validation, the ClientApp, the server's
  builder) through `strategy_traits`, the one place that knows their names and defaults. A Flower strategy that
  declares nothing gets the defaults: no client requests, no stragglers, no server data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from .constraints import Allowed, parameter_constraints
from .requests import ClientRequest
from .stages import ClientStage


@runtime_checkable
class ReportsRound(Protocol):
    """A strategy that tells the recorder, after each aggregation, its per-node weights and named scalars."""

    client_weights: dict[int, float]  # node id -> aggregation weight
    round_scalars: dict[str, float]  # e.g. FedLAW's gamma, the number of stragglers


@runtime_checkable
class ReportsClients(Protocol):
    """A strategy that also tells the recorder, after each round, named per-node values (Fair-yet-Equal's
    contributions and selection counts): `client_scalars[name][node_id]`, recorded as `<name>_client_<partition>`."""

    client_scalars: dict[str, dict[int, float]]


@runtime_checkable
class PreparesFederation(Protocol):
    """A strategy with a stage before its training rounds (`fedsim.protocol.stages`): fedsim's ServerApp calls
    `prepare` once, before round 1 (not on resume: the checkpoint holds what it found), and saves what it returns
    (plain data) as the run folder's `preparation.json`."""

    def prepare(self, grid: Grid, config: ConfigRecord, timeout: float) -> dict[str, Any]: ...


@runtime_checkable
class PersonalisesModels(Protocol):
    """A strategy whose nodes do not all hold the global model (FedCollab's coalitions): the final evaluation gives
    each node `model_for(node_id)`."""

    def model_for(self, node_id: int, global_arrays: ArrayRecord) -> ArrayRecord: ...


@runtime_checkable
class KnowsPartitions(Protocol):
    """A Grid that tells which partition a node holds (fedsim's Grid: in every engine and in deployment), for a
    strategy that treats a group of partitions differently (the stale clients of `strategies.unstale`)."""

    def partition_of(self, node_id: int) -> int: ...


@runtime_checkable
class KeepsNodeState(Protocol):
    """An engine Grid whose nodes' `context.state` lives in this process, so that checkpoints can hold it."""

    def node_states(self) -> dict: ...

    def restore_node_states(self, states: dict) -> None: ...


@runtime_checkable
class PrecomputesPartitions(Protocol):
    """A partitioner that computes every partition in one pass (loading them one by one would redo it)."""

    def all_partition_indices(self) -> list[list[int]]: ...


@runtime_checkable
class ReportsClusters(Protocol):
    """A partitioner that groups rows into clusters first; the heterogeneity report shows clusters per client."""

    embedding_clusters: Any  # one cluster id per row of the partitioned data set


@dataclass(frozen=True)
class StrategyTraits:
    """A strategy class's declarations (class attributes of the same names), with the defaults of a plain Flower
    strategy."""

    parameter_constraints: Mapping[str, list[Allowed]] = field(default_factory=dict)
    client_requests: Sequence[ClientRequest] = ()
    client_stages: Mapping[str, ClientStage] = field(default_factory=dict)  # name -> client half of a stage
    supports_stragglers: bool = False  # takes `stragglers_fraction`, `straggler_mode`, `local_epochs`, `seed`
    requires_sensitive_attribute: bool = False  # its clients report group counts: data needs a sensitive attribute
    requires_server_data: bool = False  # built with `model`, `proxy_data` (the server's proxy set) and `device`
    requires_binary_labels: bool = False  # a two-class task only (AgnosticFair's boundary distance)
    requires_model: bool = False  # built with `model` (the architecture), `input_shape` and `device`, no proxy set
    requires_slow_partitions: bool = False  # built with `slow_partitions` (the device model's slow group)
    asynchronous: bool = False  # runs on fedsim's asynchronous loop (`fedsim.protocol.asynchronous`)
    # train keys it sends every round (q-FFL: momentum 0)
    client_settings: Mapping[str, float] = field(default_factory=dict)
    rebuilt_from_config: Sequence[str] = ()  # attributes a checkpoint leaves out: the config builds them again


def strategy_traits(cls: type) -> StrategyTraits:
    """The declarations of strategy class `cls`."""
    defaults = StrategyTraits()
    return StrategyTraits(
        parameter_constraints=parameter_constraints(cls),
        client_requests=tuple(getattr(cls, "client_requests", defaults.client_requests)),
        client_stages=dict(getattr(cls, "client_stages", {})),
        supports_stragglers=bool(getattr(cls, "supports_stragglers", defaults.supports_stragglers)),
        requires_sensitive_attribute=bool(getattr(cls, "requires_sensitive_attribute", False)),
        requires_server_data=bool(getattr(cls, "requires_server_data", False)),
        requires_binary_labels=bool(getattr(cls, "requires_binary_labels", False)),
        requires_model=bool(getattr(cls, "requires_model", False)),
        requires_slow_partitions=bool(getattr(cls, "requires_slow_partitions", False)),
        asynchronous=bool(getattr(cls, "asynchronous", False)),
        client_settings=dict(getattr(cls, "client_settings", {})),
        rebuilt_from_config=tuple(getattr(cls, "rebuilt_from_config", ())),
    )
