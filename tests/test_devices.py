"""The device model (`fedsim.devices`): profile arithmetic, seeded draws, the slow group, availability, traces, and
the one-line refusal of every bad `devices.*` value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedsim.devices import (
    DEFAULTS,
    TRACE_COLUMNS,
    DeviceModel,
    DeviceProfile,
    device_model,
    fedscale_trace,
    read_trace,
    validate_devices,
    write_trace,
)
from fedsim.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Hand-made training label counts (clients x 3 classes) for the slow_class rule.
LABEL_COUNTS = np.array([
    [0, 9, 1],  # 0: class 1 most
    [5, 5, 0],  # 1: classes 0 and 1 tie, so its most frequent label is 0 (the smaller class)
    [1, 2, 7],  # 2: class 2 most
    [2, 6, 0],  # 3: class 1 most
    [0, 0, 0],  # 4: no training rows, no most frequent label
])


# --- profiles ----------------------------------------------------------------------------------------------


def test_profile_arithmetic_by_hand():
    profile = DeviceProfile(speed=200.0, bandwidth_down=1e6, bandwidth_up=5e5, latency=0.05, availability=1.0)
    assert profile.compute_seconds(600) == pytest.approx(3.0)  # 600 / 200
    assert profile.transfer_seconds(2_000_000, 1_000_000) == pytest.approx(4.1)  # 2 + 2 + 2 * 0.05
    assert profile.duration(600, 2_000_000, 1_000_000) == pytest.approx(7.1)
    assert profile.transfer_seconds(0, 0) == pytest.approx(0.1)  # the latency each way, even for empty messages


def test_infinite_bandwidth_makes_transfers_free():
    profile = DeviceProfile(100.0, math.inf, math.inf, 0.0, 1.0)
    assert profile.duration(50, 10**9, 10**9) == pytest.approx(0.5)


@pytest.mark.parametrize("field, value", [("speed", 0.0), ("bandwidth_up", -1.0), ("latency", -0.1),
                                          ("availability", 0.0), ("availability", 1.5), ("speed", math.nan)])
def test_a_profile_refuses_impossible_values(field, value):
    values = {"speed": 1.0, "bandwidth_down": 1.0, "bandwidth_up": 1.0, "latency": 0.0, "availability": 1.0}
    with pytest.raises(ValueError, match=field):
        DeviceProfile(**{**values, field: value})


def test_identical_model_and_defaults():
    model = device_model({}, 4, seed=0)
    assert model.identical and model.slow_partitions == () and len(model.profiles) == 4
    assert set(model.profiles) == {DeviceProfile(1000.0, 1e7, 1e7, 0.05, 1.0)}
    # 640 samples, a 400 kB model down and up: 0.64 + 0.04 + 0.04 + 0.1 s
    assert model.profile(3).duration(640, 400_000, 400_000) == pytest.approx(0.82)
    with pytest.raises(IndexError):
        model.profile(4)
    assert device_model(None, 2, seed=0) == device_model({"model": "identical", "speed_spread": 3.0}, 2, seed=0)


def test_defaults_are_the_config_block():
    """`DEFAULTS` mirrors the `devices` block of configs/config.yaml (once the core adds it there)."""
    config = OmegaConf.load(REPO / "configs" / "config.yaml")
    if "devices" not in config:
        pytest.skip("configs/config.yaml has no devices block yet")
    assert OmegaConf.to_container(config.devices) == DEFAULTS


# --- seeded spreads ------------------------------------------------------------------------------------------


def test_profiles_are_a_function_of_seed_and_config():
    config = {"model": "lognormal", "speed_spread": 0.7, "bandwidth_spread": 0.4}
    first, again, other = (device_model(config, 50, seed) for seed in (3, 3, 4))
    assert first == again
    assert [p.speed for p in first.profiles] != [p.speed for p in other.profiles]
    # each quantity has its own stream: spreading the bandwidth leaves the speeds as they were
    narrower = device_model({**config, "bandwidth_spread": 0.0}, 50, 3)
    assert [p.speed for p in narrower.profiles] == [p.speed for p in first.profiles]
    assert {p.bandwidth_down for p in narrower.profiles} == {1e7}


def test_drawing_profiles_moves_no_other_random_stream():
    np.random.seed(11)
    expected = np.random.random()
    np.random.seed(11)
    device_model({"model": "uniform"}, 100, seed=0)
    device_model({"model": "groups", "slow_fraction": 0.5}, 100, seed=0).online(0, 1)
    assert np.random.random() == expected


def test_lognormal_spread_statistics_on_2000_clients():
    model = device_model({"model": "lognormal", "speed": 1000.0, "speed_spread": 0.5, "bandwidth": 2e6,
                          "bandwidth_spread": 1.2}, 2000, seed=1)
    speeds = np.log([p.speed for p in model.profiles])
    links = np.log([p.bandwidth_down for p in model.profiles])
    assert math.exp(np.median(speeds)) == pytest.approx(1000.0, rel=0.05)
    assert speeds.std() == pytest.approx(0.5, abs=0.03)
    assert math.exp(np.median(links)) == pytest.approx(2e6, rel=0.1)
    assert links.std() == pytest.approx(1.2, abs=0.06)
    assert all(p.bandwidth_up == p.bandwidth_down for p in model.profiles)  # one link, the same both ways
    assert not model.identical


def test_uniform_spread_is_log_uniform_within_its_bounds():
    model = device_model({"model": "uniform", "speed": 100.0, "speed_spread": 3.0}, 2000, seed=2)
    speeds = np.array([p.speed for p in model.profiles])
    assert speeds.min() >= 25.0 and speeds.max() <= 400.0  # [100 / 4, 100 * 4]
    assert speeds.min() < 27.0 and speeds.max() > 380.0
    logs = np.log(speeds)
    assert logs.mean() == pytest.approx(math.log(100.0), abs=0.05)
    assert logs.std() == pytest.approx(math.log(4.0) / math.sqrt(3.0), abs=0.03)  # a uniform's std on [-ln 4, ln 4]
    assert {p.bandwidth_down for p in model.profiles} == {1e7}  # bandwidth_spread 0: every link exactly `bandwidth`


# --- groups ------------------------------------------------------------------------------------------------


def test_groups_slow_clients_are_slower_by_the_factor():
    model = device_model({"model": "groups", "slow_clients": [1, 3], "speed": 1000.0, "bandwidth": 8e6,
                          "slow_factor": 4.0, "latency": 0.1}, 5, seed=0)
    assert model.slow_partitions == (1, 3)
    fast, slow = model.profile(0), model.profile(3)
    assert (fast.speed, fast.bandwidth_down, fast.bandwidth_up) == (1000.0, 8e6, 8e6)
    assert (slow.speed, slow.bandwidth_down, slow.bandwidth_up, slow.latency) == (250.0, 2e6, 2e6, 0.1)
    # 500 samples, 1 MB each way: fast 0.5 + 0.125 + 0.125 + 0.2, slow 2 + 0.5 + 0.5 + 0.2
    assert fast.duration(500, 10**6, 10**6) == pytest.approx(0.95)
    assert slow.duration(500, 10**6, 10**6) == pytest.approx(3.2)
    assert [model.profile(k) == fast for k in range(5)] == [True, False, True, False, True]


def test_groups_slow_fraction_is_drawn_with_the_seed_and_joins_the_named_ones():
    config = {"model": "groups", "slow_fraction": 0.3, "slow_clients": [0]}
    groups = {seed: device_model(config, 20, seed).slow_partitions for seed in range(6)}
    assert groups[0] == device_model(config, 20, 0).slow_partitions
    for slow in groups.values():
        assert 0 in slow and 6 <= len(slow) <= 7  # round(0.3 * 20) drawn, plus client 0 unless drawn anyway
        assert list(slow) == sorted(slow)
    assert len(set(groups.values())) > 1


def test_groups_slow_class_takes_clients_whose_most_frequent_label_it_is():
    assert device_model({"model": "groups", "slow_class": 1}, 5, 0, LABEL_COUNTS).slow_partitions == (0, 3)
    assert device_model({"model": "groups", "slow_class": 0}, 5, 0, LABEL_COUNTS).slow_partitions == (1,)
    # slow_count: the clients holding the most rows of the class, 9, 6, 5 rows of class 1
    assert device_model({"model": "groups", "slow_class": 1, "slow_count": 3}, 5, 0,
                        LABEL_COUNTS).slow_partitions == (0, 1, 3)
    tied = np.array([[4, 0], [4, 1], [4, 9], [1, 0]])  # class 0: three clients tie at 4 rows
    assert device_model({"model": "groups", "slow_class": 0, "slow_count": 2}, 4, 0, tied).slow_partitions == (0, 1)
    # the rules join: a named client and the class's clients
    assert device_model({"model": "groups", "slow_class": 1, "slow_clients": [4]}, 5, 0,
                        LABEL_COUNTS).slow_partitions == (0, 3, 4)


def test_groups_slow_class_needs_label_counts_and_a_matching_class():
    with pytest.raises(ValueError, match="label_counts"):
        device_model({"model": "groups", "slow_class": 1}, 5, 0)
    with pytest.raises(ValueError, match="label_counts"):
        device_model({"model": "groups", "slow_class": 1}, 4, 0, LABEL_COUNTS)  # 5 rows for 4 clients
    with pytest.raises(ConfigError, match=r"^devices\.slow_class=3 is not allowed: a class in 0\.\.2$"):
        device_model({"model": "groups", "slow_class": 3}, 5, 0, LABEL_COUNTS)
    nobody = np.array([[3, 1, 0], [2, 0, 1]])  # class 2 is nobody's most frequent label
    with pytest.raises(ConfigError, match="devices.slow_class=2"):
        device_model({"model": "groups", "slow_class": 2}, 2, 0, nobody)


# --- availability ------------------------------------------------------------------------------------------


def test_online_rate_matches_availability_and_ignores_call_order():
    model = device_model({"availability": 0.3}, 100, seed=5)
    online = np.array([[model.online(k, call) for k in range(100)] for call in range(60)])
    assert online.mean() == pytest.approx(0.3, abs=0.025)  # 6,000 draws: 4 standard errors
    assert 0.1 < online.mean(axis=1).min() and online.mean(axis=1).max() < 0.5  # no call takes everyone or nobody
    assert 0.1 < online.mean(axis=0).min() and online.mean(axis=0).max() < 0.5  # nor is any client always away
    asked = np.random.default_rng(0).permutation([(k, call) for call in range(60) for k in range(100)])[:1500]
    assert all(model.online(int(k), int(call)) == online[call, k] for k, call in asked)
    assert model == device_model({"availability": 0.3}, 100, seed=5)  # asking changed nothing
    other = device_model({"availability": 0.3}, 100, seed=6)
    assert [other.online(k, 0) for k in range(100)] != list(online[0])


def test_always_available_clients_draw_nothing(monkeypatch):
    model = device_model({"model": "lognormal"}, 3, seed=0)

    def no_draw(*args, **kwargs):
        raise AssertionError("drew a random number for a client that is always there")

    monkeypatch.setattr(np.random, "default_rng", no_draw)
    assert all(model.online(k, call) for k in range(3) for call in range(10))


def test_a_device_model_is_plain_data():
    model = device_model({"model": "groups", "slow_clients": [1]}, 3, seed=9)
    assert isinstance(model, DeviceModel) and model.seed == 9
    assert all(isinstance(p.speed, float) for p in model.profiles)


# --- traces ------------------------------------------------------------------------------------------------


def test_trace_round_trip_is_exact(tmp_path):
    profiles = [DeviceProfile(1 / 3, 1e7 / 7, 123456.789, 0.0125, 0.95),
                DeviceProfile(2e-3, math.inf, 5e5, 0.0, 1.0)]
    path = write_trace(profiles, tmp_path / "trace.csv")
    assert path.read_text().splitlines()[1] == ",".join(TRACE_COLUMNS)
    assert read_trace(path) == profiles


def test_trace_model_maps_client_k_to_row_k_mod_rows(tmp_path):
    rows = [DeviceProfile(float(10 * (i + 1)), 1e6, 2e6, 0.01, 0.9) for i in range(3)]
    path = write_trace(rows, tmp_path / "three.csv")
    model = device_model({"model": "trace", "trace": str(path)}, 7, seed=0)
    assert [p.speed for p in model.profiles] == [10.0, 20.0, 30.0, 10.0, 20.0, 30.0, 10.0]
    assert not model.identical and model.slow_partitions == ()


def test_trace_missing_columns_and_blank_cells_fall_back_to_the_config(tmp_path):
    path = tmp_path / "sparse.csv"
    path.write_text("# measured on three phones\n"
                    "availability, speed   # columns in any order\n"
                    "0.5, 40\n"
                    "\n"
                    ",80\n"
                    "# the last one\n"
                    "0.25,120.5\n")
    model = device_model({"model": "trace", "trace": str(path), "bandwidth": 5e6, "latency": 0.2,
                          "availability": 0.75}, 3, seed=0)
    assert model.profiles == (DeviceProfile(40.0, 5e6, 5e6, 0.2, 0.5), DeviceProfile(80.0, 5e6, 5e6, 0.2, 0.75),
                              DeviceProfile(120.5, 5e6, 5e6, 0.2, 0.25))
    assert read_trace(path)[1] == DeviceProfile(80.0, 1e7, 1e7, 0.05, 1.0)  # no config: DEFAULTS


def test_fedscale_conversion_by_hand(tmp_path):
    capacities = {3: {"computation": 50.0, "communication": 800.0}, 1: {"computation": 12.5, "communication": 16000}}
    profiles = fedscale_trace(capacities)
    # increasing client id: 1000 / 12.5 = 80 samples/s and 16000 kbit/s = 2,000,000 B/s; 1000 / 50 = 20 and 100,000
    assert profiles == [DeviceProfile(80.0, 2e6, 2e6, 0.05, 1.0), DeviceProfile(20.0, 1e5, 1e5, 0.05, 1.0)]
    assert fedscale_trace(capacities, latency=0.3, availability=0.5)[0] == DeviceProfile(80.0, 2e6, 2e6, 0.3, 0.5)
    # written without latency and availability, the trace takes the config's
    path = write_trace(profiles, tmp_path / "fedscale.csv", columns=("speed", "bandwidth_down", "bandwidth_up"))
    model = device_model({"model": "trace", "trace": str(path), "latency": 0.02, "availability": 0.9}, 2, seed=0)
    assert model.profile(1) == DeviceProfile(20.0, 1e5, 1e5, 0.02, 0.9)
    # 40 samples, 1 MB down, 0.5 MB up on client 1: 2 + 10 + 5 + 0.04 s
    assert model.profile(1).duration(40, 10**6, 5 * 10**5) == pytest.approx(17.04)


@pytest.mark.parametrize("capacity", [{"computation": 10.0}, {"computation": 0.0, "communication": 5.0},
                                      {"computation": "fast", "communication": 5.0}])
def test_fedscale_conversion_refuses_bad_rows(capacity):
    with pytest.raises(ValueError, match="FedScale client 7"):
        fedscale_trace({7: capacity})


def test_write_trace_needs_the_speed_column(tmp_path):
    with pytest.raises(ValueError, match="speed"):
        write_trace([DeviceProfile(1.0, 1.0, 1.0, 0.0, 1.0)], tmp_path / "t.csv", columns=("latency",))


# --- refusals ----------------------------------------------------------------------------------------------


BAD_VALUES = [  # (devices, key, value)
    ({"model": "fast"}, "devices.model", "fast"),
    ({"speed": 0}, "devices.speed", 0),
    ({"speed": -5.0}, "devices.speed", -5.0),
    ({"speed": "quick"}, "devices.speed", "quick"),
    ({"bandwidth": 0.0}, "devices.bandwidth", 0.0),
    ({"speed_spread": -0.1}, "devices.speed_spread", -0.1),
    ({"bandwidth_spread": math.inf}, "devices.bandwidth_spread", math.inf),
    ({"latency": -0.01}, "devices.latency", -0.01),
    ({"availability": 0.0}, "devices.availability", 0.0),
    ({"availability": 1.2}, "devices.availability", 1.2),
    ({"model": "groups", "slow_clients": [1, 10]}, "devices.slow_clients", [1, 10]),
    ({"model": "groups", "slow_clients": [2, 2]}, "devices.slow_clients", [2, 2]),
    ({"model": "groups", "slow_clients": [True]}, "devices.slow_clients", [True]),
    ({"model": "groups", "slow_clients": 3}, "devices.slow_clients", 3),
    ({"model": "groups", "slow_fraction": 1.0}, "devices.slow_fraction", 1.0),
    ({"model": "groups", "slow_fraction": -0.2}, "devices.slow_fraction", -0.2),
    ({"model": "groups", "slow_clients": [1], "slow_factor": 0.5}, "devices.slow_factor", 0.5),
    ({"model": "groups", "slow_class": -1}, "devices.slow_class", -1),
    ({"model": "groups", "slow_class": 1.5}, "devices.slow_class", 1.5),
    ({"model": "groups", "slow_class": 1, "slow_count": 0}, "devices.slow_count", 0),
    ({"model": "groups", "slow_class": 1, "slow_count": 11}, "devices.slow_count", 11),
    ({"model": "groups", "slow_clients": [1], "slow_count": 2}, "devices.slow_count", 2),
    ({"model": "groups"}, "devices.slow_clients", []),
    ({"model": "groups", "slow_fraction": 0.04}, "devices.slow_clients", []),  # round(0.04 * 10) = 0
    ({"model": "lognormal", "slow_clients": [1]}, "devices.model", "lognormal"),
    ({"slow_class": 5}, "devices.model", "identical"),
    ({"model": "trace"}, "devices.trace", None),
    ({"model": "trace", "trace": 7}, "devices.trace", 7),
    ({"trace": "devices.csv"}, "devices.model", "identical"),
    ({"sped": 1000.0}, "devices.sped", 1000.0),
]


@pytest.mark.parametrize("devices, key, value", BAD_VALUES, ids=[f"{case[1]}={case[2]!r}" for case in BAD_VALUES])
def test_every_bad_value_is_one_line_naming_key_and_value(devices, key, value):
    with pytest.raises(ConfigError) as caught:
        validate_devices(devices, 10)
    error = caught.value
    assert (error.key, error.value) == (key, value)
    assert str(error).startswith(f"{key}={value!r} is not allowed: ") and "\n" not in str(error)
    with pytest.raises(ConfigError):
        device_model(devices, 10, seed=0)


def test_good_blocks_pass_as_plain_data_and_as_omegaconf():
    for devices in ({}, None, DEFAULTS, {"model": "lognormal", "speed": 10, "bandwidth": math.inf},
                    {"model": "groups", "slow_clients": [0, 9], "slow_fraction": 0.5, "slow_factor": 1},
                    {"model": "groups", "slow_class": 0, "slow_count": 10}, {"availability": 1}):
        validate_devices(devices, 10)
    block = OmegaConf.create({**DEFAULTS, "model": "groups", "slow_clients": [2, 4]})
    validate_devices(block, 10)
    assert device_model(block, 10, seed=0).slow_partitions == (2, 4)


TRACE_ERRORS = [  # (file text or None for a missing file, what the message must say)
    (None, "a readable CSV file"),
    ("# nothing but a comment\n", "a header"),
    ("speed,bandwidth\n100,5\n", "line 1, column 'bandwidth'"),
    ("speed,speed\n1,2\n", "line 1, column 'speed'"),
    ("latency,availability\n0.1,0.5\n", "line 1: the header must name the column speed"),
    ("speed,latency\n", "at least one device row"),
    ("speed,latency\n100,0.1\n# slow one\n50\n", "line 4: 1 cells where the header names 2 columns"),
    ("speed,bandwidth_up\n100,1e6\n200,fast\n", "line 3, column bandwidth_up: 'fast' is not a number > 0"),
    ("speed,latency\n100,-0.5\n", "line 2, column latency: '-0.5' is not a finite number >= 0"),
    ("speed,availability\n100,0\n", "line 2, column availability: '0' is not a number in (0, 1]"),
    ("speed\n\n100\n,\n", "line 4"),
    ("speed\n100\n\n   \nnan\n", "line 5, column speed: 'nan'"),
]


@pytest.mark.parametrize("text, message", TRACE_ERRORS, ids=[case[1] for case in TRACE_ERRORS])
def test_a_bad_trace_is_one_line_naming_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        validate_devices({"model": "trace", "trace": str(path)}, 4)
    error = str(caught.value)
    assert error.startswith(f"devices.trace={str(path)!r} is not allowed: ") and "\n" not in error
    assert message in error
    with pytest.raises(ConfigError, match="devices.trace"):
        read_trace(path)


def test_an_unreadable_trace_is_refused(tmp_path):
    (tmp_path / "binary.csv").write_bytes(b"speed\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="a readable CSV file"):
        read_trace(tmp_path / "binary.csv")
    with pytest.raises(ConfigError, match="a readable CSV file"):
        read_trace(tmp_path)  # a folder
