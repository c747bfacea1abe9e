"""Flower's Byzantine-robust aggregation rules (Krum, Multi-Krum, Bulyan, coordinate-wise median and trimmed mean) on
fedsim's base, so that they run in `fedsim compare` beside fedsim's strategies with stragglers, parameter validation
and a per-client report of what each rule kept.

The arithmetic is Flower's own (flwr 1.41, `flwr.serverapp.strategy`): the selection and aggregation functions are
imported, not rewritten, and a test checks every class bit for bit against Flower's class of the same name. What this
module adds is the report: which replies a rule used and how much, computed in the same pass
(`order_statistic_shares`, vectorised, no loop over coordinates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARN
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options

from .base import COUNT, WeightedAggregation
from .common import single_array_record, single_metric, weighted_average

AUTO = "auto"
MULTIKRUM = "multikrum"  # Bulyan's selection rule by name: Flower's `select_multikrum`
SelectionRule = Callable[[list[RecordDict], int, int], list[RecordDict]]


class SelectionFunction:
    """A constraint: a callable `(contents, num_malicious_nodes, num_nodes_to_select) -> contents` (Flower's
    `selection_rule` signature)."""

    def allows(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return "a function (contents, num_malicious_nodes, num_nodes_to_select) -> contents"


# --- the report: which replies a coordinate-wise rule used --------------------------------------------------------


def order_statistic_shares(values: np.ndarray, first: int, last: int,
                           bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """For each row of `values` (one reply per row, axis 0), the number of coordinates at which its value is one of
    the order statistics `first`..`last` (0-based, inclusive) of that coordinate's column.

    Where a tie straddles the range's ends (equal values, some ranked inside and some outside), the places inside
    are shared evenly among the tied rows, so each coordinate hands out exactly `last - first + 1` in all: the
    expected count under a random tie-break (which copy a partition keeps is arbitrary, and the result the same).
    `bounds` are the `first` and `last` order statistics when the caller has them already (an odd median).
    """
    flat = values.reshape(len(values), -1)
    if bounds is None:
        part = np.partition(flat, sorted({first, last}), axis=0)
        low, high = part[first].copy(), part[last].copy()
        del part
    else:
        low, high = (np.asarray(bound).reshape(-1) for bound in bounds)
    inside = (flat >= low) & (flat <= high)
    shares = np.count_nonzero(inside, axis=1).astype(np.float64)
    # Without a tie at either end exactly `last - first + 1` values lie in [low, high]; more means ties to share.
    tied = np.flatnonzero(np.count_nonzero(inside, axis=0) > last - first + 1)
    if tied.size:
        sub, lo, hi = flat[:, tied], low[tied], high[tied]
        exact = ((sub > lo) & (sub < hi)).astype(np.float64)
        exact += (sub == lo) * _tie_fraction(sub, lo, first, last)
        exact += ((sub == hi) & (hi != lo)) * _tie_fraction(sub, hi, first, last)
        shares += exact.sum(axis=1) - np.count_nonzero(inside[:, tied], axis=1)
    return shares


def _tie_fraction(values: np.ndarray, tie: np.ndarray, first: int, last: int) -> np.ndarray:
    """Per column, the share of the ranks first..last that each of the values equal to `tie` gets: the values equal
    to it take the ranks [#below, #at-or-below - 1], and their overlap with [first, last] is split among them."""
    below = np.count_nonzero(values < tie, axis=0)
    at_or_below = np.count_nonzero(values <= tie, axis=0)
    overlap = np.minimum(last, at_or_below - 1) - np.maximum(first, below) + 1
    return np.maximum(overlap, 0) / np.maximum(at_or_below - below, 1)


# --- shared pieces ------------------------------------------------------------------------------------------------


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _sizes(contents: Sequence[RecordDict], key: str) -> list[float]:
    return [single_metric(content, key) for content in contents]


def _positions(contents: Sequence[RecordDict], selected: Sequence[RecordDict]) -> list[int]:
    """The index in `contents` of each selected RecordDict (a selection rule returns the objects it was given)."""
    index = {id(content): i for i, content in enumerate(contents)}
    try:
        return [index[id(content)] for content in selected]
    except KeyError:
        raise ValueError("the selection rule returned a RecordDict it was not given: it must return a subset of "
                         "its input (as Flower's select_multikrum does)") from None


def _layer_by_layer(contents: Sequence[RecordDict], rule: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    key: str) -> tuple[ArrayRecord, np.ndarray]:
    """`rule(stack) -> (aggregate, coordinates used per reply)` on every floating-point array of the replies (stacked
    along axis 0); integer arrays are their n_k-weighted mean. Returns the new arrays and each reply's share of the
    coordinates it was used at."""
    records = [single_array_record(content) for content in contents]
    names = list(records[0].keys())
    counts = np.zeros(len(records))
    coordinates = 0
    averaged: dict[str, np.ndarray] = {}
    integers = []
    for name in names:
        first = records[0][name].numpy()
        if not _is_float(first):
            integers.append(name)
            continue
        stack = np.stack([record[name].numpy() for record in records])
        averaged[name], used = rule(stack)
        counts += used
        coordinates += first.size
    averaged.update(_integer_average(contents, integers, key))
    return ArrayRecord({name: Array(np.asarray(averaged[name])) for name in names}), counts / max(coordinates, 1)


def _integer_average(contents: Sequence[RecordDict], names: Sequence[str], key: str) -> dict[str, np.ndarray]:
    """The integer arrays (BatchNorm's num_batches_tracked): sum_k n_k w_k / sum_k n_k over `contents`, in float64,
    rounded and cast back (the base's FedAvg average)."""
    if not names:
        return {}
    sizes = _sizes(contents, key)
    total = sum(sizes)
    return weighted_average(contents, [size / total for size in sizes], names)


class _RobustRule(WeightedAggregation):
    """The part the robust rules share: one pass per round in `aggregate_train`, reporting 0 for unused replies."""

    def _report(self, replies: Sequence[Message], weights: dict[int, float]) -> None:
        """`client_weights`: one entry per valid reply, 0.0 where the rule used nothing of it."""
        self.client_weights = {reply.metadata.src_node_id: 0.0 for reply in replies}
        self.client_weights.update({node: float(w) for node, w in weights.items()})


# --- Krum and Multi-Krum ------------------------------------------------------------------------------------------


class MultiKrum(_RobustRule):
    """Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017): average the m replies whose
    neighbourhoods are tightest.

    With p valid replies w_1..w_p (all arrays flattened together) and f = `num_malicious_nodes`:

        d_ij = ||w_i - w_j||^2,   s_i = sum of d_ij over the max(1, p - f - 2) nearest j != i,
        S = the m replies with the smallest s_i,   w = sum_{k in S} n_k w_k / sum_{k in S} n_k.

    Flower's `select_multikrum` (with its `compute_distances`) picks S and Flower's `aggregate_arrayrecords` averages
    it, so the result is Flower's `MultiKrum` bit for bit; every array is averaged (an integer buffer comes back as
    float64, as with fedsim's FedAvg). The train metrics are averaged over S, as Flower does. The rules work on the
    models w_k as Flower's do; distances are the same on the updates Delta_k = w_k - w_global.

    Report: `client_weights[k]` = n_k / sum_{j in S} n_j for k in S, 0 for the rest (the weights of the average);
    `round_scalars["selected"]` = |S|.

    Krum's guarantee needs p > 2f + 2; Flower checks nothing and aggregates whatever arrives (with at least one
    neighbour per reply), and so does this class, logging a warning when a round has p <= 2f + 2.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    num_malicious_nodes : int >= 0, default 0
        f, the number of Byzantine replies tolerated.
    num_nodes_to_select : int >= 1 or "auto", default 1 (Flower's default; Krum)
        m. "auto" takes m = max(1, p - f - 2) of the round's p valid replies: the "krum" baseline of the Flag
        Aggregator paper (Multi-Krum with m = p - f - 2), and the configured default. An integer m above p selects
        all p.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "num_malicious_nodes": COUNT,
        "num_nodes_to_select": [Interval(Integral, 1, None, closed="left"), Options({AUTO})],
    }

    def __init__(self, *, num_malicious_nodes: int = 0, num_nodes_to_select: int | str = 1, **kwargs: Any) -> None:
        if num_malicious_nodes < 0:
            raise ValueError(f"num_malicious_nodes={num_malicious_nodes!r}: must be >= 0")
        if num_nodes_to_select != AUTO and not (isinstance(num_nodes_to_select, int) and num_nodes_to_select >= 1):
            raise ValueError(f"num_nodes_to_select={num_nodes_to_select!r}: an integer >= 1 or '{AUTO}'")
        super().__init__(**kwargs)
        self.num_malicious_nodes, self.num_nodes_to_select = num_malicious_nodes, num_nodes_to_select

    def summary(self) -> None:
        log(INFO, "\t├──> %s: num_malicious_nodes=%s, num_nodes_to_select=%s", type(self).__name__,
            self.num_malicious_nodes, self.num_nodes_to_select)
        super().summary()

    def nodes_to_select(self, num_replies: int) -> int:
        """m for a round with `num_replies` valid replies."""
        if self.num_nodes_to_select == AUTO:
            return max(1, num_replies - self.num_malicious_nodes - 2)
        return int(self.num_nodes_to_select)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        f = self.num_malicious_nodes
        if len(valid) <= 2 * f + 2:
            log(WARN, "%s: %d replies, but tolerating %d malicious ones needs more than 2f + 2 = %d; aggregating "
                "anyway, as Flower does", type(self).__name__, len(valid), f, 2 * f + 2)
        contents = [reply.content for reply in valid]
        selected = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=self.nodes_to_select(
            len(valid)))
        arrays = aggregate_arrayrecords(selected, self.weighted_by_key)
        sizes = _sizes(selected, self.weighted_by_key)
        total = sum(sizes)
        chosen = [valid[i] for i in _positions(contents, selected)]
        self._report(valid, {r.metadata.src_node_id: size / total for r, size in zip(chosen, sizes, strict=True)})
        self.round_scalars["selected"] = float(len(selected))
        return arrays, self.train_metrics_aggr_fn(selected, self.weighted_by_key)


class Krum(MultiKrum):
    """Krum (Blanchard et al., NeurIPS 2017): Multi-Krum with m = 1, so the new model is the single reply with the
    smallest score s_i (see `MultiKrum`); its `client_weights` entry is 1, the others' 0. Flower's `Krum` bit for bit.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    num_malicious_nodes : int >= 0, default 0
        f, the number of Byzantine replies tolerated.
    """

    def __init__(self, *, num_malicious_nodes: int = 0, **kwargs: Any) -> None:
        super().__init__(num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1, **kwargs)


# --- Bulyan -------------------------------------------------------------------------------------------------------


class Bulyan(_RobustRule):
    """Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018, "The Hidden Vulnerability of Distributed Learning in
    Byzantium"): a Krum-style selection, then a coordinate-wise trimmed mean around the median.

    With p valid replies and f = `num_malicious_nodes`, theta = p - 2f and beta = theta - 2f:

        S = selection_rule(replies, f, theta)                 (Multi-Krum by default: the theta best-scored)
        per coordinate c:  med_c = median_{k in S} w_k[c],
                           w[c] = mean of the beta values w_k[c], k in S, closest to med_c.

    Flower's selection rule and `aggregate_n_closest_weights` do the work, so the result is Flower's `Bulyan` bit for
    bit on floating-point arrays; the train metrics are averaged over S, as Flower does. Integer arrays (BatchNorm's
    num_batches_tracked) are the n_k-weighted mean over S, rounded and cast back (deviation: Flower takes their
    median and closest-mean too, returning float64).

    Per-round rule: Flower requires p >= 4f + 3. A round with fewer valid replies is skipped as Flower skips it: a
    warning, no new model (None, None), every valid reply reported with weight 0 and `selected` 0.

    Report: `client_weights[k]` = the share of the coordinates at which reply k is one of the beta values averaged
    (ties at the cut shared evenly, see `order_statistic_shares`), 0 for replies outside S; the shares sum to beta.
    They come from a second, vectorised pass over |w_k - med| (Flower's helper does not return its choice).
    `round_scalars["selected"]` = |S| = theta.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    num_malicious_nodes : int >= 0, default 0
        f, the number of Byzantine replies tolerated.
    selection_rule : None, "multikrum" or a function, default None
        Flower's parameter: a function (contents, num_malicious_nodes, num_nodes_to_select) -> contents that returns
        a subset of the contents it is given. None and "multikrum" (the name a config can give) are Flower's
        `select_multikrum`.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "num_malicious_nodes": COUNT,
        "selection_rule": [None, Options({MULTIKRUM}), SelectionFunction()],
    }

    def __init__(self, *, num_malicious_nodes: int = 0, selection_rule: SelectionRule | str | None = None,
                 **kwargs: Any) -> None:
        if num_malicious_nodes < 0:
            raise ValueError(f"num_malicious_nodes={num_malicious_nodes!r}: must be >= 0")
        if selection_rule is not None and selection_rule != MULTIKRUM and not callable(selection_rule):
            raise ValueError(f"selection_rule={selection_rule!r}: null, '{MULTIKRUM}' or a function")
        super().__init__(**kwargs)
        self.num_malicious_nodes = num_malicious_nodes
        self.selection_rule: SelectionRule = (select_multikrum if selection_rule in (None, MULTIKRUM)
                                              else selection_rule)  # type: ignore[assignment]

    def summary(self) -> None:
        log(INFO, "\t├──> Bulyan: num_malicious_nodes=%s, selection_rule=%s", self.num_malicious_nodes,
            getattr(self.selection_rule, "__name__", self.selection_rule))
        super().summary()

    def min_replies(self) -> int:
        """4f + 3, Flower's minimum number of valid replies for a round."""
        return 4 * self.num_malicious_nodes + 3

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        f = self.num_malicious_nodes
        if len(valid) < self.min_replies():
            log(WARN, "Bulyan: %d valid replies, fewer than 4f + 3 = %d (f = %d): round %d aggregates nothing, as in "
                "Flower", len(valid), self.min_replies(), f, server_round)
            self._report(valid, {})
            self.round_scalars["selected"] = 0.0
            return None, None
        contents = [reply.content for reply in valid]
        theta = len(valid) - 2 * f
        beta = theta - 2 * f
        selected = self.selection_rule(contents, f, theta)
        positions = _positions(contents, selected)

        def closest_to_the_median(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            median = np.median(stack, axis=0)
            layers = [[layer] for layer in stack]
            return (np.asarray(aggregate_n_closest_weights([median], layers, beta)[0]),
                    order_statistic_shares(np.abs(stack - median), 0, beta - 1))

        arrays, weights = _layer_by_layer(selected, closest_to_the_median, self.weighted_by_key)
        self._report(valid, {valid[i].metadata.src_node_id: w for i, w in zip(positions, weights, strict=True)})
        self.round_scalars["selected"] = float(len(selected))
        return arrays, self.train_metrics_aggr_fn(selected, self.weighted_by_key)


# --- coordinate-wise median and trimmed mean ----------------------------------------------------------------------


class _CoordinateWise(_RobustRule):
    """A rule applied coordinate by coordinate over every valid reply's floating-point arrays; integer arrays are the
    n_k-weighted mean over the replies, rounded and cast back (deviation: Flower applies the rule to them too and
    returns float64). The report is each reply's share of coordinates at which its value is one of the order
    statistics the rule uses."""

    def coordinate_rule(self, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flower's aggregate of one layer (replies along axis 0), and each reply's count of coordinates used."""
        raise NotImplementedError

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [reply.content for reply in valid]
        arrays, shares = _layer_by_layer(contents, self.coordinate_rule, self.weighted_by_key)
        self._report(valid, {reply.metadata.src_node_id: s for reply, s in zip(valid, shares, strict=True)})
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class FedMedian(_CoordinateWise):
    """FedMedian (Yin, Chen, Ramchandran, Bartlett, ICML 2018, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates"): the coordinate-wise median of the p valid replies,

        w[c] = median_k w_k[c]   (the middle value for odd p, the mean of the two middle values for even p).

    Flower's `FedMedian` exposes no helper: its arithmetic is `np.median(np.stack(layers), axis=0)` per array, which
    this class runs as it is (bit for bit Flower's on floating-point arrays; it does not empty the replies' records as
    Flower's does). Train metrics are averaged over every valid reply, as Flower does.

    Report: `client_weights[k]` = the share of coordinates at which w_k[c] is (one of) the median value(s) used: rank
    (p-1)/2 for odd p, ranks p/2 - 1 and p/2 for even p, with ties at the median shared evenly (so the shares sum
    to 1 for odd p and 2 for even p).

    Parameters: `WeightedAggregation`'s only.
    """

    def coordinate_rule(self, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        median = np.median(stack, axis=0)
        p = len(stack)
        bounds = (median, median) if p % 2 else None  # an odd median is the middle value itself
        return median, order_statistic_shares(stack, (p - 1) // 2, p // 2, bounds)


class FedTrimmedAvg(_CoordinateWise):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the floor(beta p) smallest and the
    floor(beta p) largest of the p values and average the rest,

        l = floor(beta p),   w[c] = mean of the order statistics l .. p - l - 1 of (w_k[c])_k.

    Flower's `trim_mean` computes it (bit for bit Flower's `FedTrimmedAvg` on floating-point arrays). With
    l = 0 (small p) nothing is trimmed, as in Flower. Train metrics are averaged over every valid reply.

    Report: `client_weights[k]` = the share of coordinates at which w_k[c] was kept (ties at the cut shared evenly,
    so the shares sum to p - 2l).

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    beta : float in [0, 0.5), default 0.2 (Flower's)
        The fraction cut off each tail.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {"beta": [Interval(Real, 0, 0.5, closed="left")]}

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta={beta!r}: must be in [0, 0.5)")
        super().__init__(**kwargs)
        self.beta = beta

    def summary(self) -> None:
        log(INFO, "\t├──> FedTrimmedAvg: beta=%s", self.beta)
        super().summary()

    def coordinate_rule(self, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = len(stack)
        cut = int(self.beta * p)  # as Flower's trim_mean
        return trim_mean(stack, self.beta), order_statistic_shares(stack, cut, p - cut - 1)
