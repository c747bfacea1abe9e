"""Unstale: stale updates converted by gradient inversion (Haoming Wang, Wei Gao; arXiv 2309.13536, AAAI 2025 as
"Tackling Intertwined Data and Device Heterogeneities in FL with Unlimited Staleness"; reference code
`pittisl/FL-with-intertwined-heterogeneity`, spec §14 of docs/algorithms-wave2.md).

The setting (the reference's `fixed.py`, simulated inside the synchronous loop): the clients holding one kind of data
are also the slow ones, so their updates are always `delay` rounds stale. A stale client trains from w0 = the global
model of `delay` rounds ago (the initial model until round delay + 1) and returns w; its update Δ = w − w0 was
computed on a model the federation has since left, and averaged as if it were fresh it pulls the global model by
what that data meant to w0. The strategy keeps the last `delay` + 1
global models, sends stale clients (`stale_clients`, or the device model's slow group) the old one, and converts
each stale reply into an estimate ŵ of the update the client would have sent from the current model w_t:

- `none`: no staleness at all; stale clients get w_t like everyone else (the reference's dc = 0, an upper bound);
- `direct`: ŵ = w_t + Δ (dc = 2);
- `discount`: ŵ = w_t + 2^(−s/`discount_half_life`)·Δ, s the staleness in rounds (dc = 4, half-life 20);
- `dcasgd`: ŵ = w_t + Δ − λ·Δ⊙Δ⊙(w_t − w0), DC-ASGD's first-order compensation (dc = 3, λ = `dcasgd_lambda` = 4);
- `inversion` (the paper's, dc = 1): gradient inversion (`strategies.gradient_inversion`) finds inputs X and soft
  labels L whose K full-batch GD steps at the client lr from w0 reproduce Δ (L1 over the parameter tensors),
  then the same K steps on (X, L) from w_t give Δ_rec and ŵ = w_t + Δ_rec.

Then ŵ (and the fresh replies' w) enter the plain n_k-weighted average (the reference averages with equal weights;
its clients all hold 600 rows, so that is the same). The conversions act on the floating entries of the model; the
inversion on its parameters (weights and biases, as the reference's keys ending in 't' or 's'), the other floating
entries (normalisation statistics) by `direct`; integer buffers are w_t's.

Switching back (`switch`; only with `inversion`). Late in training the global model moves little, a stale update is
nearly a fresh one and the inversion's own error dominates, so the paper switches back to plain aggregation, for good:
- `drift` (fedsim's default, server-observable): for each stale reply, GI runs and gives its relative fit error
  ε = ‖Δ_sim − Δ‖₁/‖Δ‖₁ (Δ_sim: the simulated update on (X, L) from w0). GI's result is used while ε is smaller
  than the relative drift of the global model since the stale version, ρ = ‖w_t − w0‖₁/‖Δ‖₁ (a stale update hurts
  only as far as the model moved); a reply where ε ≥ ρ is applied directly and GI stops for good after that round.
  A stale client that started from w_t itself
  (ρ = 0, e.g. round 1) is applied directly without GI and without switching: there is nothing to convert.
- `estimate` (server-observable): the same, comparing the fit error's absolute size ‖Δ_sim − Δ‖₁ with the change
  that staleness makes to the update on the reconstructed data, ‖Δ_rec − Δ_sim‖₁: an estimate of the oracle's e1
  against e2 below, in one unit, at no extra cost (Δ_rec is needed anyway).
- `oracle` — SIMULATION ONLY, the reference's switch test: while GI is active, the server also asks each stale
  client (a stage message, `unstale.oracle`) what its plain local training makes of w_t, the true unstale update
  w_true, and compares e1 = ‖w_true − ŵ_GI‖₁ with e2 = ‖w_true − (w_t + Δ)‖₁; once e2 < e1 GI stops for good (as
  `fixed.py` intends). It costs every stale client a second local training per round and needs the client to have
  the current model, which is exactly what a stale client does not have: a yardstick, never a deployment setting.
- `never`: GI on every stale reply (the reference's `streaming_fed.py`).

What crosses the wire: a stale client's train instruction carries w0 in place of w_t (its config is everyone's);
its reply is the ordinary one (w, n_k, metrics). With `switch=oracle` a stale client also gets a stage message
carrying w_t and answers its trained weights. The inversion runs on the server, which holds the architecture
(`requires_model`) and the last `delay` + 1 global models.

Per round `metrics.csv` gets `stale_replies`, `staleness` (rounds between w0 and w_t), `gi_used` (stale replies
converted by GI), `gi_switched` (1 once GI has stopped), and when GI ran `gi_fit_error` (ε, mean over the round's
inversions) and `gi_drift` (ρ, likewise); with `switch=oracle`, while GI runs, `oracle_inversion_error` and
`oracle_direct_error` (e1 and e2 relative to ‖w_true − w_t‖₁), and `oracle_discount_error`, `oracle_dcasgd_error`
(what those conversions would have made of the same replies).

Deviations from the reference:
- The switch: the reference's released `fixed.py` overwrites every GI result with the raw stale update (its guard
  `epoch >= switch_max or epoch < switch` holds whenever GI ran, spec §14.3), so what it runs is `direct` with a GI
  computation thrown away. Here the GI result is used, and switching stops GI from the next round on (the
  reference waits `delay` more rounds after its test fires and gives up GI after round 300, `switch_max`). The
  oracle test compares e2 < e1 (`fixed.py` tests e1 < e2, which switches when GI is the better one; the dirichlet
  variant's e2 < 0.9·e1 is the intent).
- Staleness: the reference's history shift makes its stale clients start from the model of `delay` − 1 rounds ago,
  and only from round `delay` on (fresh before). Here they start from the model of exactly `delay` rounds ago, the
  initial model until then, so they are stale from round 2 on; `discount` uses the actual staleness s.
- The label loss is soft-label cross-entropy (`gi_loss=cross_entropy`), fedsim's clients' own loss; the reference's
  BCEWithLogits on the raw label logits is `gi_loss=bce`. On the tiny linear client of tests/test_unstale.py both
  fit Δ to 10⁻⁴, but the update retrained from a drifted model was off by 8% with cross-entropy against 15% with
  BCE (the stale Δ: 18%). In bench/reproduce_staleness.py (seed 0) BCE fitted Δ to about 14% only and its retrained
  updates, unbounded with targets outside [0, 1], made the global model diverge (final test accuracy 0.217 against
  0.950 with cross-entropy).
- `gi_iterations` defaults to 500, not 40 000 (on one CPU core an iteration of the digits MLP 200-200 with 256 images
  and 3 steps takes about 35 ms: 500 are 20 s per stale reply); `gi_box` is the data's own range ([0, 1] for
  fedsim's image sets, which is the reference's [−dm/ds, (1 − dm)/ds] with dm 0.5, ds 0.25 in pixel units), and X
  lives in the reference's normalised units.
- The simulated local training is K = `gi_steps` full-batch GD steps (default: the local epochs the client was
  sent). A client whose rows span several minibatches (or that uses momentum) trains differently: set the clients'
  batch size above their row count and momentum 0 (the YAML's `client_optimizer`), or `gi_steps` to the client's
  step count.
- A conversion that is not finite (a diverged inversion) is replaced by `direct` for that reply.
- fedsim gives the strategy its model and the data's input shape (`requires_model`); no proxy set is carved out.

Measured (bench/reproduce_staleness.py, digits, 10 one-class clients all training every round, digit 5 stale by 40
rounds, 100 rounds, E = 5 full-batch steps at lr 0.5, MLP 64, GI 64 images × 200 iterations, seeds 0-2; final test
accuracy, mean ± std). Staleness did not cost digit 5 here (its stale updates, computed where its loss was higher,
over-weight it) but the other digits: overall none 0.956 ± 0.003, direct 0.938 ± 0.013, discount 0.954 ± 0.007
(digit 5 down to 0.901 ± 0.025), dcasgd 0.927 ± 0.006, inversion 0.957 ± 0.005 (digit 5 0.964 ± 0.025, the others
0.957 ± 0.009 against direct's 0.936 ± 0.012). Against the clients' true unstale update (`switch=oracle`, seed 0,
rounds 2-52) the relative L1 errors were inversion 0.20, direct 0.63, discount 0.67, dcasgd 0.62. The switch
rules: `drift` never stopped GI (ρ stayed above 0.6: with delay 40 the model always moved more than one update),
`estimate` stopped it at round 89, the oracle at round 52, after one failed inversion (fit 0.30 against a typical
0.04; e1 1.96 against e2 0.77); final accuracies 0.950, 0.950 and 0.953.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from torch import nn

from fedsim.protocol.capabilities import KnowsPartitions
from fedsim.protocol.constraints import Interval, InvalidParameter, Items, Options
from fedsim.protocol.experiment import experiment_from_record
from fedsim.protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, LOCAL_EPOCHS_KEY, ROUND_KEY
from fedsim.protocol.stages import STAGE_KEY, STAGE_MESSAGE_TYPE, StageRound

from .base import WeightedAggregation
from .common import single_array_record, to_array_record, weighted_average
from .gradient_inversion import (
    LOSSES,
    InversionSettings,
    invert_update,
    l1_distance,
    l1_norm,
    retrained_update,
    simulated_update,
)

CONVERSIONS = ("none", "direct", "discount", "dcasgd", "inversion")
SWITCHES = ("drift", "estimate", "oracle", "never")
ORACLE_STAGE = "unstale.oracle"
_GI_SALT = 23011

Tensors = dict[str, torch.Tensor]


# --- the conversions --------------------------------------------------------------------------------------------

def floating(arrays: Mapping[str, torch.Tensor]) -> list[str]:
    """The entries a conversion acts on: the floating-point ones."""
    return [name for name, value in arrays.items() if value.is_floating_point()]


def stale_update(trained: Mapping[str, torch.Tensor], stale: Mapping[str, torch.Tensor]) -> Tensors:
    """Δ = w − w0 on the floating entries."""
    return {name: trained[name].double() - stale[name].double() for name in floating(stale)}


def discount_factor(staleness: int, half_life: float) -> float:
    """2^(−s/half_life): the reference's weighted aggregation (half-life 20 rounds)."""
    return float(2.0 ** (-staleness / half_life))


def converted(conversion: str, current: Mapping[str, torch.Tensor], stale: Mapping[str, torch.Tensor],
              update: Mapping[str, torch.Tensor], staleness: int, dcasgd_lambda: float = 4.0,
              half_life: float = 20.0) -> Tensors:
    """ŵ of a stale reply under `direct`, `discount` or `dcasgd` (float64; `update` = Δ, see the module docstring).
    `none` never has stale replies and `inversion` is `Unstale.inverted`."""
    out: Tensors = {}
    for name, delta in update.items():
        w_t = current[name].double()
        if conversion == "direct":
            out[name] = w_t + delta
        elif conversion == "discount":
            out[name] = w_t + discount_factor(staleness, half_life) * delta
        elif conversion == "dcasgd":
            out[name] = w_t + delta - dcasgd_lambda * delta * delta * (w_t - stale[name].double())
        else:
            raise ValueError(f"conversion={conversion!r}: direct, discount or dcasgd")
    return out


def uses_inversion(switch: str, fit_error: float, drift: float, residual: float, change: float) -> bool:
    """The server-observable switch rules for one stale reply: `drift` uses GI while its relative fit error
    ‖Δ_sim − Δ‖₁/‖Δ‖₁ is below the global model's relative drift ‖w_t − w0‖₁/‖Δ‖₁; `estimate` while the fit's
    residual ‖Δ_sim − Δ‖₁ is below the change staleness makes on the reconstruction, ‖Δ_rec − Δ_sim‖₁. `never`
    and `oracle` (decided by `Unstale._oracle_test`) use it."""
    if switch == "drift":
        return fit_error < drift
    if switch == "estimate":
        return residual < change
    return True


def oracle_update(local: StageRound) -> RecordDict:
    """The client half of `switch=oracle`: what its plain local training makes of the global model w_t the stage
    message carries (this round's settings and data order)."""
    return RecordDict({ARRAYS_RECORD: local.trained(local.received)})


def gi_seed(seed: int, server_round: int, partition: int) -> int:
    """The inversion's seed, from (seed, round, partition) alone."""
    return int(np.random.SeedSequence([seed, server_round, partition, _GI_SALT]).generate_state(1, np.uint64)[0]
               % (2**63))


def _tensors(record: ArrayRecord) -> Tensors:
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in record.items()}


def _record(values: Mapping[str, torch.Tensor], like: ArrayRecord) -> ArrayRecord:
    """`values` in `like`'s order and dtypes (integers rounded)."""
    out = {}
    for name, array in like.items():
        value = values[name].detach().cpu().numpy()
        dtype = array.numpy().dtype
        out[name] = Array(np.ascontiguousarray(value.astype(dtype) if np.issubdtype(dtype, np.floating)
                                               else np.rint(value).astype(dtype)))
    return ArrayRecord(out)


def _with_arrays(message: Message, arrays: ArrayRecord) -> Message:
    """A copy of a train instruction carrying `arrays` (Flower's FedAvg shares one RecordDict between nodes)."""
    records = {name: record for name, record in message.content.items() if name != ARRAYS_RECORD}
    return Message(RecordDict({ARRAYS_RECORD: arrays, **records}), dst_node_id=message.metadata.dst_node_id,
                   message_type=message.metadata.message_type)


class _Pair:
    """A list of exactly two numbers [low, high]."""

    def allows(self, value: Any) -> bool:
        return Items(Interval(Real, None, None), length=2).allows(value)

    def __str__(self) -> str:
        return "a list of two numbers [low, high]"


# --- the server -------------------------------------------------------------------------------------------------

class Unstale(WeightedAggregation):
    """Always-stale clients and the conversion of their updates (see the module docstring).

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    model, input_shape, device
        What fedsim gives a strategy with `requires_model`: the architecture the inversion trains and the shape of
        one input row.
    slow_partitions : list of int or None
        The device model's slow group, which fedsim passes (`requires_slow_partitions`).
    delay : int >= 0, default 40
        How many rounds stale the stale clients are (the reference's 40).
    stale_clients : list of int or None, default None
        Partition ids of the stale clients; None: `slow_partitions` (e.g. `devices.model=groups
        devices.slow_class=5`, the clients dominated by digit 5 as in the reference). Neither: no stale client.
    conversion : "none" | "direct" | "discount" | "dcasgd" | "inversion", default "inversion"
    switch : "drift" | "estimate" | "oracle" | "never", default "drift"
        When GI stops for good (`inversion` only). `oracle` is a simulation-only yardstick.
    dcasgd_lambda : float >= 0, default 4
    discount_half_life : float > 0, default 20
    gi_images, gi_iterations, gi_lr : default 256, 500, 1.0
        Rows of X, Adam iterations (the reference's 40 000), Adam's lr in normalised units.
    gi_steps : int or None, default None
        K, the full-batch GD steps of the simulated local training; None: the local epochs the client was sent.
    gi_box : [low, high] or None, default [0, 1]
        The inputs' range (fedsim's image sets: [0, 1]); None: X unbounded.
    gi_loss : "cross_entropy" | "bce", default "cross_entropy"
    lr : float > 0
        The clients' lr (`${client.lr}`), for the simulated steps.
    """

    requires_model: ClassVar[bool] = True
    requires_slow_partitions: ClassVar[bool] = True
    rebuilt_from_config: ClassVar[tuple[str, ...]] = ("model", "device", "input_shape", "num_classes")
    client_stages: ClassVar[dict[str, Any]] = {ORACLE_STAGE: oracle_update}
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "delay": [Interval(Integral, 0, None, closed="left")],
        "stale_clients": [Items(Interval(Integral, 0, None, closed="left")), None],
        "conversion": [Options(CONVERSIONS)],
        "switch": [Options(SWITCHES)],
        "dcasgd_lambda": [Interval(Real, 0, None, closed="left")],
        "discount_half_life": [Interval(Real, 0, None, closed="neither")],
        "gi_images": [Interval(Integral, 1, None, closed="left")],
        "gi_iterations": [Interval(Integral, 0, None, closed="left")],
        "gi_lr": [Interval(Real, 0, None, closed="neither")],
        "gi_steps": [Interval(Integral, 1, None, closed="left"), None],
        "gi_box": [_Pair(), None],
        "gi_loss": [Options(LOSSES)],
        "lr": [Interval(Real, 0, None, closed="neither")],
    }

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        box = arguments.get("gi_box")
        if box is not None and _Pair().allows(box) and not box[0] < box[1]:
            raise InvalidParameter("gi_box", box, "[low, high] with low < high")

    def __init__(self, *, model: nn.Module, input_shape: Sequence[int], device: str = "cpu",
                 slow_partitions: Sequence[int] | None = None, delay: int = 40,
                 stale_clients: Sequence[int] | None = None, conversion: str = "inversion", switch: str = "drift",
                 dcasgd_lambda: float = 4.0, discount_half_life: float = 20.0, gi_images: int = 256,
                 gi_iterations: int = 500, gi_lr: float = 1.0, gi_steps: int | None = None,
                 gi_box: Sequence[float] | None = (0.0, 1.0), gi_loss: str = "cross_entropy", lr: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if conversion not in CONVERSIONS:
            raise ValueError(f"conversion={conversion!r}: one of {', '.join(CONVERSIONS)}")
        if switch not in SWITCHES:
            raise ValueError(f"switch={switch!r}: one of {', '.join(SWITCHES)}")
        if gi_loss not in LOSSES:
            raise ValueError(f"gi_loss={gi_loss!r}: one of {', '.join(LOSSES)}")
        if delay < 0 or lr <= 0 or gi_lr <= 0 or discount_half_life <= 0 or gi_images < 1 or gi_iterations < 0:
            raise ValueError("Unstale needs delay >= 0, lr > 0, gi_lr > 0, discount_half_life > 0, gi_images >= 1 "
                             "and gi_iterations >= 0")
        if gi_box is not None and not float(gi_box[0]) < float(gi_box[1]):
            raise ValueError(f"gi_box={list(gi_box)!r}: [low, high] with low < high")
        self.model, self.device = model, str(device)
        self.input_shape = [int(v) for v in input_shape]
        with torch.no_grad():
            self.num_classes = int(model.to("cpu").eval()(torch.zeros(1, *self.input_shape)).shape[-1])
        chosen = stale_clients if stale_clients is not None else slow_partitions
        self.stale_partitions = sorted({int(p) for p in chosen or ()})
        if not self.stale_partitions:
            log(WARNING, "Unstale: no stale clients (strategy.stale_clients and the device model's slow group are "
                "empty): this is FedAvg")
        self.delay, self.conversion, self.switch = int(delay), conversion, switch
        self.dcasgd_lambda, self.discount_half_life = float(dcasgd_lambda), float(discount_half_life)
        self.gi_images, self.gi_iterations, self.gi_lr = int(gi_images), int(gi_iterations), float(gi_lr)
        self.gi_steps = None if gi_steps is None else int(gi_steps)
        self.gi_box = None if gi_box is None else (float(gi_box[0]), float(gi_box[1]))
        self.gi_loss, self.lr = gi_loss, float(lr)
        self.history: dict[int, ArrayRecord] = {}  # round -> the global model sent in it (the last delay + 1)
        self.sent: dict[int, tuple[int, int]] = {}  # this round's stale nodes -> (round of their model, epochs)
        self.oracle: dict[int, ArrayRecord] = {}  # this round's stale nodes -> w_true (switch=oracle)
        self.partitions: dict[int, int] = {}  # this round's stale nodes -> partition id
        self.switched_round = 0  # the round GI stopped for good (0: not yet)

    def summary(self) -> None:
        log(INFO, "\t├──> Unstale: stale partitions %s, delay %d, conversion %s, switch %s", self.stale_partitions,
            self.delay, self.conversion, self.switch)
        super().summary()

    @property
    def gi_active(self) -> bool:
        return self.conversion == "inversion" and (self.switch == "never" or self.switched_round == 0)

    # --- configure: the stale clients get the old model -----------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Everyone's instructions as FedAvg's; a stale client's carry the model of `delay` rounds ago (with
        `switch=oracle`, the stale clients also train from w_t in a stage message, before the round)."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.history[server_round] = arrays
        self.history = {r: a for r, a in self.history.items() if r >= server_round - self.delay}
        self.sent, self.oracle, self.partitions = {}, {}, {}
        base = min(self.history)
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            partition = _partition_of(grid, node)
            if partition in self.stale_partitions:
                epochs = int(message.content[CONFIG_RECORD].get(LOCAL_EPOCHS_KEY, self.local_epochs))
                start = server_round if self.conversion == "none" else base
                self.sent[node], self.partitions[node] = (start, epochs), partition
                if start != server_round:
                    message = _with_arrays(message, self.history[start])
            out.append(message)
        if self.gi_active and self.switch == "oracle":
            self.oracle = self._ask_oracle(server_round, arrays, out, grid)
        return out

    def _ask_oracle(self, server_round: int, arrays: ArrayRecord, messages: list[Message],
                    grid: Grid) -> dict[int, ArrayRecord]:
        """SIMULATION ONLY: each stale client's plain local training from w_t (`oracle_update`)."""
        stale = [m for m in messages if m.metadata.dst_node_id in self.sent
                 and self.sent[m.metadata.dst_node_id][0] != server_round]
        if not stale:
            return {}
        timeout = float(experiment_from_record(stale[0].content[CONFIG_RECORD])["server"]["round_timeout"])
        queries = [Message(RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: ConfigRecord(
            {**dict(m.content[CONFIG_RECORD]), STAGE_KEY: ORACLE_STAGE, ROUND_KEY: server_round})}),
            dst_node_id=m.metadata.dst_node_id, message_type=STAGE_MESSAGE_TYPE) for m in stale]
        answers = grid.send_and_receive(queries, timeout=timeout)
        return {reply.metadata.src_node_id: single_array_record(reply.content) for reply in answers
                if not reply.has_error()}

    # --- aggregate: convert the stale replies, then the weighted average ------------------------------------------
    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """sum_k p_k w_k with each stale reply's w_k replaced by its conversion ŵ_k."""
        current = self.current_arrays
        assert current is not None
        report = RoundReport()
        contents = []
        for reply in replies:
            node = reply.metadata.src_node_id
            arrays = single_array_record(reply.content)
            if node in self.sent:
                start, epochs = self.sent[node]
                report.stale += 1
                report.staleness = server_round - start
                if start != server_round:
                    arrays = self._converted(server_round, node, arrays, current, start, epochs, report)
            contents.append(RecordDict({ARRAYS_RECORD: arrays}))
        if self.switched_round == 0 and report.switch:
            self.switched_round = server_round
            log(INFO, "Unstale: round %d, gradient inversion stops for good (switch=%s)", server_round, self.switch)
        self.round_scalars.update(report.scalars(self.switched_round, oracle=self.switch == "oracle"))
        self.oracle = {}
        return to_array_record(weighted_average(contents, weights), single_array_record(contents[0]).keys())

    def _converted(self, server_round: int, node: int, arrays: ArrayRecord, current: ArrayRecord, start: int,
                   epochs: int, report: RoundReport) -> ArrayRecord:
        """ŵ of one stale reply (w trained from the model of round `start`)."""
        w_t, w0 = _tensors(current), _tensors(self.history[start])
        update = stale_update(_tensors(arrays), w0)
        staleness = server_round - start
        if self.conversion != "inversion":
            values = converted(self.conversion, w_t, w0, update, staleness, self.dcasgd_lambda,
                               self.discount_half_life)
            return _record({**w_t, **values}, current)
        direct = converted("direct", w_t, w0, update, staleness)
        if not self.gi_active or all(torch.equal(w_t[name], w0[name]) for name in update):
            return _record({**w_t, **direct}, current)  # GI stopped, or nothing to convert (w0 = w_t)
        estimate, verdict = self.inverted(server_round, self.partitions[node], w_t, w0, update, epochs, report)
        true = self.oracle.get(node)
        if self.switch == "oracle" and true is not None:
            verdict = self._oracle_test(_tensors(true), w_t, w0, update, estimate, direct, staleness, report)
        if verdict.use and not all(bool(torch.isfinite(value).all()) for value in estimate.values()):
            verdict = Verdict(use=False, switch=verdict.switch)  # a diverged inversion: this reply goes direct
        report.gi_used += int(verdict.use)
        report.switch = report.switch or verdict.switch
        return _record({**w_t, **direct, **(estimate if verdict.use else {})}, current)

    def inverted(self, server_round: int, partition: int, w_t: Tensors, w0: Tensors, update: Tensors, epochs: int,
                 report: RoundReport) -> tuple[Tensors, Verdict]:
        """(ŵ = w_t + Δ_rec on the parameters, the switch rule's verdict): Δ inverted from w0 (seeded by seed,
        round and partition) and retrained from w_t."""
        names = [name for name, _ in self.model.named_parameters()]
        device = torch.device(self.device)
        settings = InversionSettings(steps=self.gi_steps or epochs, client_lr=self.lr, images=self.gi_images,
                                     iterations=self.gi_iterations, lr=self.gi_lr, box=self.gi_box,
                                     loss=self.gi_loss)
        model = self.model.to(device)
        start = {name: w0[name].float().to(device) for name in names}
        target = {name: update[name].float().to(device) for name in names}
        model.load_state_dict({name: value.to(device) for name, value in w0.items()})
        generator = torch.Generator().manual_seed(gi_seed(self.seed, server_round, partition))
        inversion = invert_update(model, start, target, settings, self.input_shape, self.num_classes, generator)
        simulated = simulated_update(model, start, inversion.inputs, inversion.labels, settings.steps,
                                     settings.client_lr, settings.loss)
        model.load_state_dict({name: value.to(device) for name, value in w_t.items()})
        current = {name: w_t[name].float().to(device) for name in names}
        rebuilt = retrained_update(model, current, inversion, settings)
        size = max(l1_norm(target), 1e-30)
        drift = float(l1_distance(current, start)) / size
        report.fits.append(inversion.fit_error)
        report.drifts.append(drift)
        use = uses_inversion(self.switch, inversion.fit_error, drift, float(l1_distance(simulated, target)),
                             float(l1_distance(rebuilt, simulated)))
        estimate = {name: w_t[name].double() + rebuilt[name].cpu().double() for name in names}
        return estimate, Verdict(use=use, switch=not use and self.switch != "never")

    def _oracle_test(self, true: Tensors, w_t: Tensors, w0: Tensors, update: Tensors, estimate: Tensors,
                     direct: Tensors, staleness: int, report: RoundReport) -> Verdict:
        """SIMULATION ONLY: e1 = ‖w_true − ŵ_GI‖₁ against e2 = ‖w_true − (w_t + Δ)‖₁ on the parameters. This round
        uses GI's estimate; GI stops for good once e2 < e1. Reported relative to ‖w_true − w_t‖₁, with the errors of
        `discount` and `dcasgd` beside them (what each conversion would have made of this reply)."""
        names = list(estimate)
        others = {kind: converted(kind, w_t, w0, {n: update[n] for n in names}, staleness, self.dcasgd_lambda,
                                  self.discount_half_life) for kind in ("discount", "dcasgd")}

        def error(values: Mapping[str, torch.Tensor]) -> float:
            return sum(float((true[n].double() - values[n]).abs().sum()) for n in names)

        scale = max(error({n: w_t[n].double() for n in names}), 1e-30)
        e1, e2 = error(estimate), error(direct)
        for kind, value in (("inversion", e1), ("direct", e2), *((k, error(v)) for k, v in others.items())):
            report.oracle.setdefault(kind, []).append(value / scale)
        return Verdict(use=True, switch=e2 < e1)


@dataclass(frozen=True)
class Verdict:
    """A switch rule's answer for one stale reply: use GI's estimate for it; stop GI for good after this round."""

    use: bool
    switch: bool


@dataclass
class RoundReport:
    """What one round's conversions report (`round_scalars`)."""

    stale: int = 0
    staleness: int = 0
    gi_used: int = 0
    switch: bool = False
    fits: list[float] = field(default_factory=list)
    drifts: list[float] = field(default_factory=list)
    oracle: dict[str, list[float]] = field(default_factory=dict)  # conversion -> relative errors (switch=oracle)

    def scalars(self, switched_round: int, oracle: bool) -> dict[str, float]:
        out = {"stale_replies": float(self.stale), "staleness": float(self.staleness),
               "gi_used": float(self.gi_used), "gi_switched": float(switched_round != 0)}
        if self.fits:
            out["gi_fit_error"] = float(np.mean(self.fits))
            out["gi_drift"] = float(np.mean(self.drifts))
        if oracle:
            out.update({f"oracle_{kind}_error": float(np.mean(errors)) for kind, errors in self.oracle.items()})
        return out


def _partition_of(grid: Grid, node: int) -> int:
    """The node's partition: fedsim's Grid knows it; a bare Grid's nodes are taken in id order (the in-process
    engine's node i + 1 holds partition i)."""
    if isinstance(grid, KnowsPartitions):
        return int(grid.partition_of(node))
    return sorted(grid.get_node_ids()).index(node)
