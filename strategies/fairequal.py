"""Fair yet Asymptotically Equal Collaborative Learning (Lin, Xu, Ng, Foo, Low; ICML 2023): clients that contribute
more are rewarded with fresher models, and, as the server model converges, every client's model converges to it.

Two stages (reference: `xqlin98/Fair-yet-Equal-CML`, `run_2stages_exp_stream.py` and `utils/utils.py`):

1. Explore. Every node trains from the server model; the server steps x <- x + sum_i w_i Delta_i (w_i = n_i / sum n,
   FedAvg) and values the round: phi_i^t, a stratified Monte-Carlo Shapley value (one random coalition per size)
   of the game U(S) = cos(g, sum_{j in S} w_j Delta_j), g the round's server update. The contribution psi_i is the
   running mean of phi_i^t. Stage 1 ends when a one-sample Hotelling T^2 test finds the recent per-round values of
   `samp_dim` sampled nodes no different from their earlier mean (p-value > alpha), or after `explore_rounds`.
2. Exploit. Each round floor(ratio * n) nodes are drawn without replacement with p = softmax(beta * psi); only they
   receive the server model, train and count: x <- x + sum_{i in S} w_i Delta_i with w_i still n_i / sum_all n
   (the reference's choice: the server's step shrinks to about `ratio`). A node keeps the last server model it
   received, so the more often it is drawn, the better (and closer to the server's) its model: its reward.

The utilities come from the Gram matrix of the weighted updates (u_j . u_k), so valuing a round costs n^2 coalition
sums of n numbers, not n^2 passes over the model. Coalitions, the Hotelling nodes and the stage-2 draws come from
generators seeded by (seed, round), so a run is the same on every engine and after a resume.

Where this differs from the reference, or the reference leaves a choice:
- Coalition sums use u_j = w_j Delta_j (the specification). The reference adds its already weighted updates with the
  weight again (w_j^2 Delta_j); with equal shards, as in its experiments, the cosines are the same.
- A node's kept model is the server model it was sent (the reference reloads it after training), so in stage 1 the
  nodes hold, and are evaluated on, the model of the round's start.
- A stage-1 node without a valid reply (failure, straggler) gets phi = 0, the value of a player with no update, and
  the round's game is played by the nodes that replied, weighted n_i / sum over them (FedAvg).
- Stage 2 draws at least one node where int(ratio * n) = 0 (the reference would train none).
- Each stage-1 round is the same local data again, not the reference's next stream batch: once clean nodes have
  converged, the server update is mostly the noisy nodes', and late rounds' phi stop ranking clean over noisy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options

from .base import WeightedAggregation
from .common import single_array_record, single_metric
from .ida import trainable_names
from .stragglers import apply_stragglers

SCORE_TYPES = ("contribution", "random", "reverse")  # the reference's "proportion" and its two ablations
PROBABILITY_FLOOR = 1e-30  # the reference's: no node's selection probability is exactly 0
_SHAPLEY_SALT, _SELECT_SALT, _TEST_NODES_SALT = 6271, 7411, 8803


# --- stage 1: the value of a round's updates ------------------------------------------------------------------------

def coalition_cosine(gram: np.ndarray, members: np.ndarray) -> float:
    """U(S) = cos(g, sum_{j in S} u_j) from G_jk = u_j . u_k, g = sum_j u_j; 0 for the empty coalition or a zero
    vector (the reference's cosine with eps)."""
    if not members.any():
        return 0.0
    g_squared = float(gram.sum())
    s_squared = float(gram[np.ix_(members, members)].sum())
    if g_squared <= 0.0 or s_squared <= 0.0:
        return 0.0
    return float(gram[members].sum()) / np.sqrt(g_squared * s_squared)


def stratified_shapley(gram: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """phi_i = (1/n) sum_{s=0}^{n-1} [U(S_s + i) - U(S_s)], S_s one uniform coalition of size s of the others (the
    reference's `cosine_gradient_linear`). Exact for n <= 2; an unbiased estimate of the Shapley value otherwise,
    so sum_i phi_i = U(N) = 1 holds in expectation only."""
    n = len(gram)
    phi = np.zeros(n)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        for size in range(n):
            members = np.zeros(n, dtype=bool)
            members[rng.choice(others, size=size, replace=False)] = True
            before = coalition_cosine(gram, members)
            members[i] = True
            phi[i] += (coalition_cosine(gram, members) - before) / n
    return phi


def update_gram(base: ArrayRecord, records: Sequence[ArrayRecord], weights: Sequence[float]) -> np.ndarray:
    """G_jk = u_j . u_k with u_j = w_j (x_j - x) over the trainable arrays (the reference's `model.parameters()`),
    one array at a time in float64."""
    gram = np.zeros((len(records), len(records)))
    for name in trainable_names(base):
        start = base[name].numpy().astype(np.float64).ravel()
        updates = np.stack([float(w) * (record[name].numpy().astype(np.float64).ravel() - start)
                            for record, w in zip(records, weights, strict=True)])
        gram += updates @ updates.T
    return gram


def hotelling_pvalue(rows: np.ndarray, mean: np.ndarray) -> float:
    """One-sample Hotelling T^2 test of the rows (n x p) against `mean`, with `pingouin.multivariate_ttest`'s
    arithmetic (the reference's test): T^2 = n d' S^+ d, d = mean of rows - `mean`, S the sample covariance,
    F = T^2 (n - p) / (p (n - 1)) on (p, n - p) degrees of freedom. Needs n > p."""
    from scipy.stats import f  # scipy loads only when a test runs: strategy modules stay light to import

    n, p = rows.shape
    covariance = np.atleast_2d(np.cov(rows, rowvar=False))
    difference = rows.mean(axis=0) - mean
    t2 = float(difference @ np.linalg.pinv(covariance, hermitian=True) @ difference) * n
    return float(f.sf(t2 * (n - p) / (p * (n - 1)), p, n - p))


# --- stage 2: who gets the model --------------------------------------------------------------------------------------

def selection_probabilities(contributions: np.ndarray, beta: float, score_type: str = "contribution") -> np.ndarray:
    """softmax(beta * psi) with the reference's 1e-30 floor (uniform if it overflows to NaN); `random`: uniform;
    `reverse`: the probabilities swapped by rank (the largest goes to the smallest contribution)."""
    n = len(contributions)
    scaled = np.exp(beta * (contributions - np.max(contributions)))
    p = scaled / scaled.sum()
    if np.isnan(p).any():
        p = np.full(n, 1.0 / n)
    p = (p + PROBABILITY_FLOOR) / (p.sum() + n * PROBABILITY_FLOOR)
    if score_type == "random":
        return np.full(n, 1.0 / n)
    if score_type == "reverse":
        order = np.argsort(p, kind="stable")
        reversed_ = np.empty_like(p)
        reversed_[order] = p[order[::-1]]
        return reversed_
    return p


class FairYetEqual(WeightedAggregation):
    """Explore (all nodes; Shapley contributions; Hotelling stop), then exploit (softmax(beta * psi) draws of
    floor(ratio * n) nodes, the only ones to get the model): see the module docstring.

    Reported each round: `client_weights` (w_i of the round's updates), `round_scalars` `stage` (1 or 2),
    `selected` (nodes sent the model) and, once the test can run, `hotelling_pvalue`; `client_scalars`
    `contribution` (psi), `selected` (times drawn in stage 2), `distance` (||x_server - x_i|| over the trainable
    arrays, x_i the node's kept model) and, in stage 2, `probability`. Each node is evaluated on its kept model
    (`model_for`), so metrics.csv's `acc_client_<p>` is the accuracy of the node's own model: its reward.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    beta : float >= 0, default 150 (the reference's stream experiments; 30 for its RL runs)
        Softmax inverse temperature on raw psi. Shapley values of the cosine utility sum to about U(N) = 1, so psi
        is about 1/n per node and beta * psi scales as beta / n: the reference's 150 is for n = 30; keep beta / n to
        keep the selectivity (beta = 50 at n = 10).
    ratio : float in (0, 1], default 0.4
        Share of the nodes drawn each stage-2 round: int(ratio * n) as the reference, at least 1 here.
    alpha : float in [0, 1], default 0.7
        Stage 1 stops when the Hotelling test's p-value exceeds it (0.95 in the reference's RL runs).
    samp_num : int >= 1, default 15
        tau: the test compares all the rows with the mean of the rows but the last tau, and runs only once there
        are more than max(tau, samp_dim) rows (and at least 5, pingouin's minimum); before that, stage 1 goes on.
    samp_dim : int >= 1, default 10
        Nodes whose per-round values enter the test, drawn once with the seed; capped at the number of nodes.
    explore_rounds : int >= 0, default 0
        T1. 0: the test decides when stage 1 ends; k > 0: exactly k stage-1 rounds and no test. (The reference's
        `if T1 == 0 & T == 0` parses as `T1 == 0`, so a given T1 is replaced by T and stage 2 never runs; this is
        the intended reading.)
    score_type : "contribution" (default) | "random" | "reverse"
        The reference's ablations: uniform draws, or the probabilities reversed by rank.
    renormalise : bool, default False
        Stage 2 weights n_i / sum_{i in S} n (a full FedAvg step among the drawn) instead of n_i / sum_all n.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "beta": [Interval(Real, 0, None, closed="left")],
        "ratio": [Interval(Real, 0, 1, closed="right")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "samp_num": [Interval(Integral, 1, None, closed="left")],
        "samp_dim": [Interval(Integral, 1, None, closed="left")],
        "explore_rounds": [Interval(Integral, 0, None, closed="left")],
        "score_type": [Options(SCORE_TYPES)],
        "renormalise": [bool],
    }

    def __init__(self, *, beta: float = 150.0, ratio: float = 0.4, alpha: float = 0.7, samp_num: int = 15,
                 samp_dim: int = 10, explore_rounds: int = 0, score_type: str = "contribution",
                 renormalise: bool = False, **kwargs: Any) -> None:
        if score_type not in SCORE_TYPES:
            raise ValueError(f"score_type={score_type!r}: one of {', '.join(SCORE_TYPES)}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio={ratio!r}: must be in (0, 1]")
        if beta < 0 or not 0 <= alpha <= 1 or samp_num < 1 or samp_dim < 1 or explore_rounds < 0:
            raise ValueError(f"beta={beta!r}, alpha={alpha!r}, samp_num={samp_num!r}, samp_dim={samp_dim!r}, "
                             f"explore_rounds={explore_rounds!r}: out of range")
        super().__init__(**kwargs)
        self.beta, self.ratio, self.alpha = float(beta), float(ratio), float(alpha)
        self.samp_num, self.samp_dim, self.explore_rounds = samp_num, samp_dim, explore_rounds
        self.score_type, self.renormalise = score_type, bool(renormalise)
        self.stage = 1
        self.explored = 0  # stage-1 rounds run
        self.nodes: list[int] = []  # every node seen, in the Grid's (partition) order
        self.sizes: dict[int, float] = {}  # node -> n_i, from its replies
        self.phi_rows: list[list[float]] = []  # phi^t of `nodes` per valued stage-1 round (0: did not reply)
        self.contribution: dict[int, float] = {}  # psi
        self.test_nodes: list[int] = []  # the Hotelling test's samp_dim nodes
        self.probabilities: dict[int, float] = {}  # stage 2's selection probabilities
        self.times_selected: dict[int, int] = {}
        self.kept_round: dict[int, int] = {}  # node -> round whose server model it last received
        self.sent_models: dict[int, ArrayRecord] = {}  # round -> the model sent then, while some node keeps it

    def reset_report(self) -> None:
        self.client_scalars: dict[str, dict[int, float]] = {}
        super().reset_report()

    def summary(self) -> None:
        log(INFO, "\t├──> Fair-yet-Equal: beta=%s, ratio=%s, alpha=%s, tau=%s, samp_dim=%s, T1=%s, %s",
            self.beta, self.ratio, self.alpha, self.samp_num, self.samp_dim, self.explore_rounds or "test",
            self.score_type)
        super().summary()

    # --- configure: everyone (stage 1) or the drawn (stage 2); each node evaluates its own model ----------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        available = list(grid.get_node_ids())
        self._know(available)
        if self.stage == 1:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        else:
            messages = self._configure_drawn(server_round, arrays, config, set(available))
        receivers = [message.metadata.dst_node_id for message in messages]
        self.kept_round.update(dict.fromkeys(receivers, server_round))
        if receivers:
            self.sent_models[server_round] = arrays
        self.sent_models = {r: model for r, model in self.sent_models.items() if r in set(self.kept_round.values())}
        self.round_scalars.update({"stage": float(self.stage), "selected": float(len(receivers))})
        return messages

    def _configure_drawn(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                         available: set[int]) -> list[Message]:
        self.reset_report()
        self.current_arrays = arrays
        drawn = self.draw(server_round, available)
        for node in drawn:
            self.times_selected[node] = self.times_selected.get(node, 0) + 1
        config["server-round"] = server_round  # as Flower's configure_train
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: self.train_config(config)})
        messages = self._construct_messages(record, drawn, MessageType.TRAIN)
        kept, count = apply_stragglers(messages, self.straggler_mode, self.stragglers_fraction, self.local_epochs,
                                       self.seed, server_round)
        self.round_scalars["stragglers"] = float(count)
        return [self._with_node_config(message) for message in kept]

    def draw(self, server_round: int, available: set[int]) -> list[int]:
        """int(ratio * n) (at least 1) of the available nodes, without replacement, with the stage-2 probabilities
        (renormalised over the available ones), seeded by (seed, round); in node order."""
        candidates = [node for node in self.nodes if node in available]
        if not candidates:
            return []
        p = np.array([self.probabilities.get(node, 0.0) for node in candidates])
        p = p / p.sum() if p.sum() > 0 else np.full(len(candidates), 1.0 / len(candidates))
        count = min(len(candidates), max(1, int(self.ratio * len(self.nodes))))
        rng = np.random.default_rng([self.seed, server_round, _SELECT_SALT])
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=count, replace=False, p=p))]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return [self._with_own_model(message, arrays)
                for message in super().configure_evaluate(server_round, arrays, config, grid)]

    def model_for(self, node_id: int, global_arrays: ArrayRecord) -> ArrayRecord:
        """The last server model the node received (the global one before it received any)."""
        kept = self.kept_round.get(node_id)
        return self.sent_models[kept] if kept is not None else global_arrays

    def _with_own_model(self, message: Message, global_arrays: ArrayRecord) -> Message:
        node = message.metadata.dst_node_id
        records = {name: record for name, record in message.content.items() if name != self.arrayrecord_key}
        return Message(RecordDict({**records, self.arrayrecord_key: self.model_for(node, global_arrays)}),
                       dst_node_id=node, message_type=message.metadata.message_type)

    # --- aggregate: weights, the server step (and stage 1's valuation), the stage, the report ---------------------
    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> list[float]:
        """Stage 1: n_i / sum n over the replies (FedAvg). Stage 2: n_i / sum n over every node (not renormalised
        over the drawn, unless `renormalise`)."""
        nodes = [reply.metadata.src_node_id for reply in replies]
        sizes = [single_metric(reply.content, self.weighted_by_key) for reply in replies]
        self._know(nodes)
        self.sizes.update(zip(nodes, sizes, strict=True))
        total = sum(sizes) if self.stage == 1 or self.renormalise else sum(self.sizes.values())
        return [size / total for size in sizes]

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """x + sum_i w_i (x_i - x) in float64, x the model sent this round; in stage 1 also phi^t of the round."""
        base = self.current_arrays
        if base is None:
            raise RuntimeError("FairYetEqual aggregates updates against the model it sent: configure_train first")
        records = [single_array_record(reply.content) for reply in replies]
        if self.stage == 1:
            self._value(server_round, [reply.metadata.src_node_id for reply in replies], records, weights)
        stepped = {}
        for name in base.keys():
            start = base[name].numpy()
            total = start.astype(np.float64)
            for record, weight in zip(records, weights, strict=True):
                total = total + float(weight) * (record[name].numpy().astype(np.float64) - start)
            stepped[name] = (total.astype(start.dtype) if np.issubdtype(start.dtype, np.floating)
                             else np.rint(total).astype(start.dtype))
        # np.array keeps 0-d arrays (BatchNorm's counter) 0-d; common.to_array_record's ascontiguousarray would not
        return ArrayRecord({name: Array(np.array(stepped[name], order="C")) for name in base.keys()})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        stage = self.stage
        arrays, metrics = super().aggregate_train(server_round, replies)
        if stage == 1:
            self._end_explore_round()
        server = arrays if arrays is not None else self.current_arrays
        if server is not None:
            self._report_clients(server)
        return arrays, metrics

    def _value(self, server_round: int, nodes: list[int], records: list[ArrayRecord],
               weights: Sequence[float]) -> None:
        """phi^t of the round's nodes (the others 0: a node without an update adds nothing to any coalition), and
        the running mean psi^t = t/(t+1) psi^{t-1} + phi^t/(t+1) of every node."""
        assert self.current_arrays is not None
        gram = update_gram(self.current_arrays, records, weights)
        phi = stratified_shapley(gram, np.random.default_rng([self.seed, server_round, _SHAPLEY_SALT]))
        by_node = dict(zip(nodes, phi.tolist(), strict=True))
        row = [by_node.get(node, 0.0) for node in self.nodes]
        t = len(self.phi_rows)
        self.contribution = {node: t / (t + 1) * self.contribution.get(node, 0.0) + value / (t + 1)
                             for node, value in zip(self.nodes, row, strict=True)}
        self.phi_rows.append(row)

    def _end_explore_round(self) -> None:
        """Count the round and decide whether stage 1 is over (after `explore_rounds`, or the test's p > alpha)."""
        self.explored += 1
        if self.explore_rounds:
            done = self.explored >= self.explore_rounds
        else:
            p_value = self.stability_pvalue()
            if p_value is not None:
                self.round_scalars["hotelling_pvalue"] = p_value
            done = p_value is not None and p_value > self.alpha
        if done:
            self._begin_exploit()

    def stability_pvalue(self) -> float | None:
        """The Hotelling p-value of the test nodes' phi rows against the mean of all rows but the last tau; None
        while there are at most max(tau, samp_dim) rows, or fewer than 5."""
        if not self.phi_rows:
            return None
        if not self.test_nodes:
            count = min(self.samp_dim, len(self.nodes))
            rng = np.random.default_rng([self.seed, _TEST_NODES_SALT])
            self.test_nodes = [self.nodes[i] for i in sorted(rng.choice(len(self.nodes), size=count, replace=False))]
        columns = [self.nodes.index(node) for node in self.test_nodes]
        rows = np.array(self.phi_rows)[:, columns]
        if len(rows) <= max(self.samp_num, rows.shape[1]) or len(rows) < 5:
            return None
        return hotelling_pvalue(rows, rows[:-self.samp_num].mean(axis=0))

    def _begin_exploit(self) -> None:
        self.stage = 2
        psi = np.array([self.contribution.get(node, 0.0) for node in self.nodes])
        p = selection_probabilities(psi, self.beta, self.score_type)
        self.probabilities = dict(zip(self.nodes, p.tolist(), strict=True))
        self.times_selected = dict.fromkeys(self.nodes, 0)
        log(INFO, "Fair-yet-Equal: stage 1 ends after %d rounds; psi %s, p %s", self.explored,
            np.round(psi, 4).tolist(), np.round(p, 4).tolist())

    def _report_clients(self, server: ArrayRecord) -> None:
        names = trainable_names(server)
        distances = {}
        for kept in set(self.kept_round.values()):
            model = self.sent_models[kept]
            distance = float(np.sqrt(sum(np.sum((server[name].numpy().astype(np.float64)
                                                 - model[name].numpy().astype(np.float64)) ** 2) for name in names)))
            distances.update({node: distance for node, r in self.kept_round.items() if r == kept})
        self.client_scalars = {
            "contribution": {node: self.contribution.get(node, 0.0) for node in self.nodes},
            "selected": {node: float(self.times_selected.get(node, 0)) for node in self.nodes},
            "distance": distances,
        }
        if self.probabilities:
            self.client_scalars["probability"] = {node: self.probabilities.get(node, 0.0) for node in self.nodes}

    def _know(self, nodes: Iterable[int]) -> None:
        """Add nodes not seen before (a node appearing mid-run gets phi = 0 for the rounds it missed)."""
        for node in nodes:
            if node not in self.nodes:
                self.nodes.append(node)
                for row in self.phi_rows:
                    row.append(0.0)
