"""FedAsync and FedBuff, the asynchronous loop's server rules, on hand-computed values (spec §14.6)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from fedsim.checkpoint import capture, load_checkpoint, restore_strategy, save_checkpoint
from fedsim.protocol.asynchronous import MODEL_VERSION_KEY, TrainsAsynchronously
from fedsim.protocol.capabilities import ReportsRound, strategy_traits
from fedsim.protocol.constraints import InvalidParameter
from fedsim.protocol.keys import PROXIMAL_MU_KEY
from fedsim.strategies.fedasync import FedAsync, staleness_weight
from fedsim.strategies.fedbuff import FedBuff, staleness_scale

from .conftest import train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

STALENESS = (0, 1, 4, 5, 10)


def record(w: list[float], steps: int = 0) -> ArrayRecord:
    """A tiny model: a float32 weight and an int64 counter (BatchNorm's num_batches_tracked)."""
    return ArrayRecord({"w": Array(np.array(w, dtype=np.float32)),
                        "steps": Array(np.array(steps, dtype=np.int64))})


def reply(node: int, w: list[float], steps: int = 0) -> Message:
    return train_reply(node, record(w, steps), 10)


def values(arrays: ArrayRecord | None) -> tuple[np.ndarray, np.ndarray]:
    assert arrays is not None and list(arrays.keys()) == ["w", "steps"]
    return arrays["w"].numpy(), arrays["steps"].numpy()


# --- staleness functions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("function", "expected"), [
    ("constant", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ("polynomial", [1.0, 0.7071067811865476, 0.4472135954999579, 0.4082482904638631, 0.30151134457776363]),
    ("hinge", [1.0, 1.0, 1.0, 1 / 11, 1 / 61]),  # a = 10, b = 4: 1/(10 (s - 4) + 1) above 4
])
def test_fedasync_staleness_functions_with_the_papers_defaults(function, expected):
    got = [staleness_weight(function, s) for s in STALENESS]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert [FedAsync(staleness_function=function, alpha=1.0).mixing_weight(s) for s in STALENESS] == got


def test_fedasync_staleness_functions_with_given_a_and_b():
    assert [staleness_weight("polynomial", s, a=1.0) for s in STALENESS] == [1.0, 1 / 2, 1 / 5, 1 / 6, 1 / 11]
    assert [staleness_weight("hinge", s, a=2.0, b=1.0) for s in STALENESS] == [1.0, 1.0, 1 / 7, 1 / 9, 1 / 19]
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight("polynomial", -1)
    with pytest.raises(ValueError, match="staleness_function"):
        staleness_weight("exponential", 1)


def test_fedbuff_staleness_scaling():
    np.testing.assert_allclose([staleness_scale("sqrt", s) for s in STALENESS],
                               [1.0, 0.7071067811865476, 0.4472135954999579, 0.4082482904638631,
                                0.30151134457776363], rtol=1e-15)
    assert [staleness_scale("none", s) for s in STALENESS] == [1.0] * 5


# --- declarations and configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [FedAsync, FedBuff])
def test_both_declare_the_asynchronous_loop_and_report_their_rounds(cls):
    traits = strategy_traits(cls)
    assert traits.asynchronous and not traits.supports_stragglers
    strategy = cls()
    assert isinstance(strategy, TrainsAsynchronously) and isinstance(strategy, ReportsRound)
    assert strategy.concurrency == 10
    with pytest.raises(ValueError, match="stragglers"):
        cls(stragglers_fraction=0.5)


def test_configure_update_sends_the_version_and_fedasyncs_proximal_mu():
    config = ConfigRecord({"server-round": 3})
    assert dict(FedAsync().configure_update(7, record([0.0]), config)) == {
        "server-round": 3, PROXIMAL_MU_KEY: 0.005, MODEL_VERSION_KEY: 7}
    assert dict(FedAsync(proximal_mu=0.0).configure_update(0, record([0.0]), config))[PROXIMAL_MU_KEY] == 0.0
    assert dict(FedBuff().configure_update(2, record([0.0]), config)) == {"server-round": 3, MODEL_VERSION_KEY: 2}
    assert dict(config) == {"server-round": 3}  # the caller's record is left as it is


@pytest.mark.parametrize(("cls", "arguments"), [
    (FedAsync, {"alpha": 0.0}), (FedAsync, {"alpha": 1.5}), (FedAsync, {"staleness_function": "exponential"}),
    (FedAsync, {"a": -1.0}), (FedAsync, {"a": "paper"}), (FedAsync, {"b": -1}), (FedAsync, {"proximal_mu": -0.1}),
    (FedAsync, {"concurrency": 0}), (FedBuff, {"buffer_size": 0}), (FedBuff, {"buffer_size": 2.5}),
    (FedBuff, {"server_lr": 0.0}), (FedBuff, {"staleness_scaling": "linear"}), (FedBuff, {"concurrency": 0}),
])
def test_bad_parameters_are_refused(cls, arguments):
    name = next(iter(arguments))
    with pytest.raises(InvalidParameter, match=f"^{name}="):
        cls(**arguments)


# --- FedAsync -------------------------------------------------------------------------------------------------

def test_fedasync_mixes_each_arriving_model_in_with_alpha_times_s():
    strategy = FedAsync(alpha=0.6)  # polynomial, a = 0.5: S(3) = 4^-0.5 = 0.5, alpha_t = 0.3
    current = record([1.0, 2.0], steps=5)
    w, steps = values(strategy.apply_update(current, record([9.0, 9.0]), reply(4, [3.0, -2.0], steps=8), 3))
    np.testing.assert_array_equal(w, np.array([0.7 * 1 + 0.3 * 3, 0.7 * 2 + 0.3 * -2], dtype=np.float32))
    assert w.dtype == np.float32 and steps.dtype == np.int64 and steps == 8  # the integer takes the arriving value
    assert strategy.round_scalars == {"updates_refused": 0.0, "alpha_t": 0.3, "alpha_t_mean": 0.3}
    assert strategy.client_weights == {4: 0.3}


def test_fedasync_hinge_and_constant_and_the_report_between_rows():
    strategy = FedAsync(alpha=0.5, staleness_function="hinge")  # a = 10, b = 4
    current = record([0.0, 11.0])
    w, _ = values(strategy.apply_update(current, current, reply(1, [11.0, 0.0]), 5))  # alpha_t = 0.5/11
    np.testing.assert_allclose(w, [0.5, 10.5], rtol=1e-7)
    w, _ = values(strategy.apply_update(current, current, reply(1, [2.0, 1.0]), 2))  # s <= b: alpha_t = 0.5
    np.testing.assert_array_equal(w, np.array([1.0, 6.0], dtype=np.float32))
    assert strategy.row_updates == 2 and strategy.round_scalars["alpha_t"] == 0.5
    assert strategy.round_scalars["alpha_t_mean"] == pytest.approx((0.5 / 11 + 0.5) / 2)
    assert strategy.client_weights == {1: pytest.approx(0.5 / 11 + 0.5)}
    strategy.reset_report()  # the core records a row, then resets
    assert strategy.round_scalars == {"updates_refused": 0.0} and strategy.client_weights == {}
    strategy.apply_update(current, current, reply(2, [0.0, 11.0]), 0)
    assert strategy.round_scalars["alpha_t_mean"] == 0.5 and strategy.client_weights == {2: 0.5}
    w, _ = values(FedAsync(alpha=0.25, staleness_function="constant").apply_update(
        current, current, reply(2, [4.0, 15.0]), 100))
    np.testing.assert_array_equal(w, np.array([1.0, 12.0], dtype=np.float32))


def _error_reply() -> Message:
    instruction = Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "crashed"), reply_to=instruction)


@pytest.mark.parametrize("bad", [
    lambda: train_reply(3, {"w": np.zeros(2, dtype=np.float32)}, 10),  # a missing array
    lambda: train_reply(3, {"w": np.zeros(3, dtype=np.float32), "steps": np.array(0)}, 10),  # a wrong shape
    lambda: train_reply(3, {"v": np.zeros(2, dtype=np.float32), "steps": np.array(0)}, 10),  # another name
    _error_reply,
])
def test_a_reply_that_does_not_match_changes_nothing(bad):
    current = record([1.0, 2.0])
    fedasync, fedbuff = FedAsync(), FedBuff(buffer_size=1)
    assert fedasync.apply_update(current, current, bad(), 0) is None
    assert fedbuff.apply_update(current, current, bad(), 0) is None
    assert fedbuff.buffered == 0 and fedbuff.buffer == {}
    assert fedasync.round_scalars == {"updates_refused": 1.0} and fedasync.row_updates == 0
    assert fedbuff.round_scalars == {"updates_refused": 1.0, "buffered": 0.0}


# --- FedBuff --------------------------------------------------------------------------------------------------

# (start, trained, steps, staleness): Delta_i = start - trained, S = 1/sqrt(1 + s)
UPDATES = [
    ([10.0, 20.0], [8.0, 18.0], 3, 0),  # Delta = (2, 2), S = 1
    ([12.0, 16.0], [9.0, 13.0], 7, 3),  # Delta = (3, 3), S = 1/2
    ([10.0, 20.0], [10.0, 26.0], 5, 8),  # Delta = (0, -6), S = 1/3
]
BUFFERED = [3.5, 1.5]  # sum_i S_i Delta_i


def _buffer(strategy: FedBuff, current: ArrayRecord, updates=UPDATES) -> list[ArrayRecord | None]:  # type: ignore[no-untyped-def]
    return [strategy.apply_update(current, record(start), reply(node, trained, steps), staleness)
            for node, (start, trained, steps, staleness) in enumerate(updates, start=1)]


def test_fedbuff_buffers_k_minus_1_updates_then_steps_with_the_scaled_mean():
    strategy = FedBuff(buffer_size=3, server_lr=0.5)
    current = record([10.0, 20.0], steps=1)
    first, second, third = _buffer(strategy, current)
    assert first is None and second is None
    w, steps = values(third)
    expected = np.array([10.0 - 0.5 * BUFFERED[0] / 3, 20.0 - 0.5 * BUFFERED[1] / 3], dtype=np.float32)
    np.testing.assert_array_equal(w, expected)  # (9.41667, 19.75)
    assert w.dtype == np.float32 and steps.dtype == np.int64 and steps == 5  # the newest buffered reply's counter
    assert strategy.buffered == 0 and strategy.buffer == {}  # reset after the step
    assert strategy.row_updates == 3 and strategy.round_scalars["buffered"] == 0
    assert strategy.round_scalars["staleness_scale_mean"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert strategy.client_weights == pytest.approx({1: 1 / 3, 2: 1 / 6, 3: 1 / 9})
    # the next buffer starts empty: two more Nones, then a step from these updates alone
    again = _buffer(strategy, current)
    assert again[:2] == [None, None]
    np.testing.assert_array_equal(values(again[2])[0], expected)


def test_fedbuff_without_staleness_scaling_is_the_plain_mean_of_the_updates():
    strategy = FedBuff(buffer_size=3, staleness_scaling="none")
    w, _ = values(_buffer(strategy, record([10.0, 20.0]))[2])
    np.testing.assert_allclose(w, [10.0 - (2 + 3 + 0) / 3, 20.0 - (2 + 3 - 6) / 3], rtol=1e-7)


def test_fedbuff_reports_what_is_buffered_after_a_row():
    strategy = FedBuff(buffer_size=3)
    _buffer(strategy, record([10.0, 20.0]), UPDATES[:2])
    assert strategy.round_scalars["buffered"] == 2
    strategy.reset_report()
    assert strategy.round_scalars == {"updates_refused": 0.0, "buffered": 2.0} and strategy.client_weights == {}


# --- checkpoints ----------------------------------------------------------------------------------------------

def test_the_fedbuff_buffer_survives_a_checkpoint(tmp_path):
    current = record([10.0, 20.0], steps=1)
    running = FedBuff(buffer_size=3, server_lr=0.5)
    _buffer(running, current, UPDATES[:2])
    save_checkpoint(tmp_path, capture(2, current, running, {}, None))
    resumed = FedBuff(buffer_size=3, server_lr=0.5)  # built afresh from the config, as `fedsim resume` does
    restore_strategy(resumed, load_checkpoint(tmp_path))
    assert resumed.buffered == 2 and set(resumed.buffer) == {"w", "steps"}
    np.testing.assert_array_equal(resumed.buffer["w"], [2.0 + 1.5, 2.0 + 1.5])  # the first two S_i Delta_i
    assert resumed.buffer["w"].dtype == np.float64
    start, trained, steps, staleness = UPDATES[2]
    after_running = running.apply_update(current, record(start), reply(3, trained, steps), staleness)
    after_resumed = resumed.apply_update(current, record(start), reply(3, trained, steps), staleness)
    for ran, resumed_value in zip(values(after_running), values(after_resumed), strict=True):
        np.testing.assert_array_equal(ran, resumed_value)
    assert resumed.round_scalars == running.round_scalars and resumed.client_weights == running.client_weights


def test_fedasync_survives_a_checkpoint(tmp_path):
    running = FedAsync(staleness_function="hinge", a=3.0)
    current = record([1.0, 2.0])
    running.apply_update(current, current, reply(1, [2.0, 2.0]), 6)
    save_checkpoint(tmp_path, capture(1, current, running, {}, None))
    resumed = FedAsync()
    restore_strategy(resumed, load_checkpoint(tmp_path))
    assert (resumed.staleness_function, resumed.a, resumed.alpha) == ("hinge", 3.0, 0.6)
    assert resumed.round_scalars == running.round_scalars
    assert resumed.client_weights == running.client_weights == {1: pytest.approx(0.6 / 7)}
