"""The compression layer (`fedsim.compression.message`) and bytes on the wire (`fedsim.grid.traffic`): a reply's
update leaves the client encoded and reaches the strategy decoded, a corrupt payload is a rejected reply, error
feedback keeps what the codec lost, and every message is counted as Flower serialises it."""

from __future__ import annotations

import csv
import struct
from collections.abc import Mapping

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

import fedsim.client as client_module
from fedsim.compression import Compressor, CorruptPayload
from fedsim.compression.message import (
    RESIDUAL_STATE,
    compress_reply,
    decompress_reply,
    frame_payload,
    is_compressed,
    unframe_payload,
)
from fedsim.config import compose_experiment, validate
from fedsim.errors import ConfigError
from fedsim.grid.traffic import batch_bytes, wire_bytes
from fedsim.protocol.experiment import experiment_record
from fedsim.protocol.keys import (
    ARRAYS_RECORD,
    COMPRESSED_PAYLOAD,
    COMPRESSED_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    NUM_EXAMPLES,
    ROUND_KEY,
)

from .conftest import read_metrics, set_task_identity

HERE = __name__


class HalfCodec(Compressor):
    """A lossy test codec: every update entry as float16, in the order `like` gives."""

    name = "half"
    dtype = np.float16

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        return b"".join(np.ascontiguousarray(value, dtype=self.dtype).tobytes() for value in update.values())

    def decode(self, payload: bytes, like: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        sizes = [int(np.prod(shape)) for shape in like.values()]
        width = np.dtype(self.dtype).itemsize
        if len(payload) != width * sum(sizes):
            raise CorruptPayload(f"{len(payload)} bytes, expected {width * sum(sizes)}")
        values = np.frombuffer(payload, dtype=self.dtype).astype(np.float32)
        cuts = np.cumsum([0, *sizes])
        return {name: values[a:b].reshape(shape)
                for (name, shape), a, b in zip(like.items(), cuts[:-1], cuts[1:], strict=True)}


class ExactCodec(HalfCodec):
    """A lossless test codec: the raw float32 bytes."""

    name = "exact"
    lossless = True
    dtype = np.float32


def _experiment(codec: str, *overrides: str) -> dict:
    return compose_experiment(["progress=false", f"compression._target_={HERE}.{codec}", f"compression.name={codec}",
                               *overrides])


def _exchange(experiment: dict, server_round: int = 1, seed: int = 0) -> tuple[Message, Message]:
    """A train message of a small model and the client's reply: weights moved by a known update, plus an integer
    buffer that is no update."""
    set_task_identity()
    rng = np.random.default_rng(seed)
    global_arrays = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
                     "steps": np.array([5], dtype=np.int64)}
    config = experiment_record(experiment)
    config[ROUND_KEY] = server_round
    sent = Message(RecordDict({ARRAYS_RECORD: ArrayRecord({k: Array(v) for k, v in global_arrays.items()}),
                               CONFIG_RECORD: config}), dst_node_id=7, message_type=MessageType.TRAIN)
    trained = {"w": global_arrays["w"] + rng.normal(scale=0.1, size=(4, 3)).astype(np.float32),
               "b": global_arrays["b"] + np.float32(0.25), "steps": np.array([6], dtype=np.int64)}
    reply = Message(RecordDict({ARRAYS_RECORD: ArrayRecord({k: Array(v) for k, v in trained.items()}),
                                METRICS_RECORD: MetricRecord({NUM_EXAMPLES: 10})}), reply_to=sent)
    return sent, reply


def _context(partition: int = 0) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition}, state=RecordDict(), run_config={})


def test_a_compressed_reply_carries_the_encoded_update_and_decodes_to_the_trained_model():
    sent, reply = _exchange(_experiment("ExactCodec"))
    packed = compress_reply(sent, reply, _context())
    assert is_compressed(packed)
    assert list(packed.content[ARRAYS_RECORD].keys()) == ["steps"]  # not an update: it travels raw
    frame = bytes(packed.content[COMPRESSED_RECORD][COMPRESSED_PAYLOAD].data)
    assert len(unframe_payload(frame, "exact")) == 4 * (12 + 3)  # the update's float32 bytes, nothing else
    unpacked = decompress_reply(packed, sent, ExactCodec())
    assert COMPRESSED_RECORD not in unpacked.content
    assert list(unpacked.content[ARRAYS_RECORD].keys()) == ["w", "b", "steps"]  # the sent order
    for name in ("w", "b"):  # w_global + (w_local - w_global): float32 rounding at most one ulp
        local, decoded = reply.content[ARRAYS_RECORD][name].numpy(), unpacked.content[ARRAYS_RECORD][name].numpy()
        np.testing.assert_array_max_ulp(decoded, local, maxulp=1)
    assert unpacked.content[ARRAYS_RECORD]["steps"].numpy().tolist() == [6]
    assert unpacked.content[METRICS_RECORD][NUM_EXAMPLES] == 10
    assert unpacked.metadata.reply_to_message_id == reply.metadata.reply_to_message_id


def test_a_reply_of_only_updates_carries_no_arrays_record_and_still_decodes():
    """No empty `arrays` record: a SuperLink skips an object it already holds, which would make the wire differ."""
    sent, reply = _exchange(_experiment("ExactCodec"))
    for message in (sent, reply):
        message.content[ARRAYS_RECORD] = ArrayRecord({name: array for name, array in
                                                      message.content[ARRAYS_RECORD].items() if name != "steps"})
    packed = compress_reply(sent, reply, _context())
    assert ARRAYS_RECORD not in packed.content and is_compressed(packed)
    unpacked = decompress_reply(packed, sent, ExactCodec())
    assert list(unpacked.content[ARRAYS_RECORD].keys()) == ["w", "b"]


def test_without_a_compressor_or_for_an_error_reply_the_reply_is_untouched():
    sent, reply = _exchange(compose_experiment(["progress=false"]))
    assert compress_reply(sent, reply, _context()) is reply
    assert decompress_reply(reply, sent, None) is reply


@pytest.mark.parametrize("damage, reason", [
    (lambda f: b"XXXX" + f[4:], "does not start with fedsim's compression frame"),
    (lambda f: f[:4] + bytes([5]) + b"other" + f[5 + 4:], "names codec b'other'"),
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "checksum does not match"),
    (lambda f: f[:6], "truncated"),
])
def test_a_damaged_frame_is_refused_in_one_line(damage, reason):
    frame = frame_payload("exact", b"\x01\x02\x03\x04")
    assert unframe_payload(frame, "exact") == b"\x01\x02\x03\x04"
    with pytest.raises(CorruptPayload, match=reason):
        unframe_payload(damage(frame), "exact")


def test_a_payload_of_the_wrong_size_or_to_a_message_without_a_model_is_corrupt():
    experiment = _experiment("ExactCodec")
    sent, reply = _exchange(experiment)
    packed = compress_reply(sent, reply, _context())
    body = unframe_payload(bytes(packed.content[COMPRESSED_RECORD][COMPRESSED_PAYLOAD].data), "exact")
    short = frame_payload("exact", body[:-4])
    packed.content[COMPRESSED_RECORD] = ArrayRecord({COMPRESSED_PAYLOAD: Array(
        dtype="uint8", shape=(len(short),), stype="fedsim.compressed", data=short)})
    with pytest.raises(CorruptPayload, match="bytes, expected"):
        decompress_reply(packed, sent, ExactCodec())
    with pytest.raises(CorruptPayload, match="answers no message that sent a model"):
        decompress_reply(packed, None, ExactCodec())
    with pytest.raises(CorruptPayload, match="compresses none"):
        decompress_reply(packed, sent, None)


def test_error_feedback_keeps_what_the_codec_lost_and_adds_it_to_the_next_update():
    """Over rounds, what the server decoded plus the residual left on the client equals the sum of the true
    updates (the memory telescopes), and the residual is what the last encoding lost."""
    experiment = _experiment("HalfCodec", "compression.error_feedback=true")
    context = _context()
    true_sum, decoded_sum = 0.0, 0.0
    for server_round in (1, 2, 3):
        sent, reply = _exchange(experiment, server_round, seed=server_round)
        update = reply.content[ARRAYS_RECORD]["w"].numpy() - sent.content[ARRAYS_RECORD]["w"].numpy()
        unpacked = decompress_reply(compress_reply(sent, reply, context), sent, HalfCodec())
        true_sum = true_sum + update
        decoded_sum = decoded_sum + (unpacked.content[ARRAYS_RECORD]["w"].numpy()
                                     - sent.content[ARRAYS_RECORD]["w"].numpy())
        residual = context.state[RESIDUAL_STATE]["w"].numpy()
        assert np.abs(residual).max() > 0  # float16 lost something
        np.testing.assert_allclose(decoded_sum + residual, true_sum, atol=1e-5)


def test_without_error_feedback_nothing_is_kept_on_the_client():
    context = _context()
    sent, reply = _exchange(_experiment("HalfCodec"))
    compress_reply(sent, reply, context)
    assert RESIDUAL_STATE not in context.state


def test_wire_bytes_are_the_objects_flower_moves_and_they_rebuild_the_message():
    """Flower sends a message as its deflated objects: those bytes alone rebuild it, and they are what we count."""
    sent, _ = _exchange(_experiment("ExactCodec"))
    objects = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(sent).items()}
    assert wire_bytes(sent) == sum(len(content) for content in objects.values())
    rebuilt = _inflate(sent.object_id, objects)
    assert rebuilt.content[ARRAYS_RECORD]["w"].numpy().tolist() == sent.content[ARRAYS_RECORD]["w"].numpy().tolist()
    arrays = sum(len(array.data) for array in sent.content[ARRAYS_RECORD].values())
    assert arrays < wire_bytes(sent) < arrays + 4096  # the arrays and some hundreds of bytes of heads and config
    assert batch_bytes([sent, sent]) == 2 * wire_bytes(sent)  # each node pulls its own copy


def _inflate(object_id: str, objects: Mapping[str, bytes]):
    """Rebuild an object from deflated bytes alone, as a receiving node does (Flower's `inflate` per object)."""
    from flwr.supercore.inflatable.inflatable_object import get_object_head_values_from_object_content
    from flwr.supercore.inflatable.inflatable_utils import inflatable_class_registry

    content = objects[object_id]
    kind, children_ids, _ = get_object_head_values_from_object_content(content)
    children = {child: _inflate(child, objects) for child in children_ids}
    return inflatable_class_registry[kind].inflate(content, children)


def test_a_config_names_a_compressor_and_its_settings_or_is_refused_in_one_line():
    validate(compose_experiment(["compression=none"]))
    with pytest.raises(ConfigError) as raised:
        validate(compose_experiment(["compression._target_=fedsim.compression.message.frame_payload"]))
    assert str(raised.value).startswith("compression._target_=")
    with pytest.raises(ConfigError) as raised:
        validate(_experiment("ExactCodec", "compression.error_feedback=true"))
    assert "compression.error_feedback=True" in str(raised.value) and "loses nothing" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        validate(_experiment("ExactCodec", "+compression.ratioo=0.1"))
    assert "compression.ratioo=0.1" in str(raised.value) and "no such setting" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        validate(_experiment("ExactCodec", "compression.error_feedback=maybe"))
    assert "compression.error_feedback='maybe'" in str(raised.value)


def test_a_run_counts_its_bytes_per_round_and_in_total(run_quietly):
    summary, folder = run_quietly("num_rounds=2", "num_clients=4", "fraction_evaluate=0.0")
    rows = read_metrics(folder)
    down = [int(row["bytes_down"]) for row in rows]
    up = [int(row["bytes_up"]) for row in rows]
    assert down[0] > 0 and up[0] > 0  # node discovery: one query each way per node
    model = 4 * sum(p.numel() for p in _mlp_parameters())
    for row_down, row_up in zip(down[1:], up[1:], strict=True):
        assert 4 * model < row_down < 4 * model * 1.05  # the model to each of 4 clients, plus small heads
        assert 4 * model < row_up < 4 * model * 1.05  # each trained model back
    assert [int(row["total_bytes_down"]) for row in rows] == np.cumsum(down).tolist()
    assert [int(row["total_bytes_up"]) for row in rows] == np.cumsum(up).tolist()
    final = summary["bytes_down"] - int(rows[-1]["total_bytes_down"])  # the final evaluation on every client
    assert 4 * model < final < 4 * model * 1.05
    assert summary["bytes_total"] == summary["bytes_down"] + summary["bytes_up"]


def _mlp_parameters():
    from fedsim.build import build_model
    from fedsim.data.federation import federation_for

    experiment = compose_experiment(["num_clients=4"])
    return build_model(experiment, federation_for(experiment).data).state_dict().values()


def test_a_compressed_run_moves_fewer_bytes_up_and_a_corrupt_payload_is_rejected_not_fatal(run_quietly,
                                                                                            monkeypatch):
    """float16 updates halve the upload; one client's damaged payload is a rejected reply, the others aggregate."""
    original = client_module.compress_reply

    def damaged(sent: Message, reply: Message, context: Context) -> Message:
        packed = original(sent, reply, context)
        if int(context.node_config["partition-id"]) == 1 and is_compressed(packed):
            data = bytearray(packed.content[COMPRESSED_RECORD][COMPRESSED_PAYLOAD].data)
            data[-1] ^= 0xFF
            packed.content[COMPRESSED_RECORD] = ArrayRecord({COMPRESSED_PAYLOAD: Array(
                dtype="uint8", shape=(len(data),), stype="fedsim.compressed", data=bytes(data))})
        return packed

    common = ("num_rounds=2", "num_clients=4", "fraction_evaluate=0.0", "seed=1")
    _, plain = run_quietly(*common, name="plain")
    monkeypatch.setattr(client_module, "compress_reply", damaged)
    summary, half = run_quietly(*common, f"compression._target_={HERE}.HalfCodec", "compression.name=half",
                                name="half")
    plain_rows, half_rows = read_metrics(plain), read_metrics(half)
    ratio = int(plain_rows[1]["bytes_up"]) / int(half_rows[1]["bytes_up"])
    assert 1.9 < ratio < 2.05  # float16 is half of float32; heads and metrics are the rest
    # the model goes down as it is; only the experiment in the config (the codec's name) is longer
    assert 0 < int(half_rows[1]["bytes_down"]) - int(plain_rows[1]["bytes_down"]) < 4 * 100
    with open(half / "rejections.csv", newline="") as stream:
        rejected = list(csv.DictReader(stream))
    assert {(row["round"], row["partition"]) for row in rejected} == {("1", "1"), ("2", "1")}
    assert all("corrupt compressed update: the payload's checksum does not match" in row["reason"]
               for row in rejected)
    assert [row["train_clients"] for row in half_rows[1:]] == ["3", "3"]
    assert float(half_rows[-1]["test_accuracy"]) > 0.5  # training went on
    assert summary["complete"]


def test_the_frame_header_is_small():
    assert len(frame_payload("fedzip", b"")) == 4 + 1 + 6 + 4
    assert struct.unpack("<I", frame_payload("x", b"abc")[6:10])[0] != 0


@pytest.mark.parametrize("strategy", [("strategy=fedavg",),
                                      ("strategy=fedbuff", "strategy.concurrency=2", "strategy.buffer_size=2")])
def test_the_virtual_clock_times_the_compressed_upload(run_quietly, strategy):
    """On a slow link the upload is most of a call: a payload 20x smaller makes the simulated rounds (synchronous)
    and the asynchronous loop's arrivals (corrected once the reply came) correspondingly shorter."""
    link = ("num_rounds=2", "num_clients=3", "fraction_evaluate=0.0", "devices.bandwidth=1e5", "devices.speed=1e6",
            *strategy)
    _, plain = run_quietly(*link, name="plain")
    _, packed = run_quietly(*link, "compression=topk", "compression.ratio=0.02", name="packed")
    plain_time, packed_time = (float(read_metrics(folder)[-1]["sim_time"]) for folder in (plain, packed))
    model = 4 * sum(p.numel() for p in _mlp_parameters())
    one_way = model / 1e5  # seconds for the model over the link
    assert plain_time == pytest.approx(2 * 2 * one_way, rel=0.1)  # 2 rows, the model down and up each
    assert packed_time == pytest.approx(2 * one_way, rel=0.1)  # 2 rows, the model down, (almost) nothing up


def test_a_stopped_run_resumes_with_each_clients_error_feedback_memory(monkeypatch, tmp_path):
    """The residuals live in each node's state, which the checkpoint keeps: a resumed run goes on as if never
    stopped (without the memory, round 3's updates would differ)."""
    from fedsim.run import run_experiment
    from fedsim.testing.crash import untimed_metrics

    from .conftest import stop_after_checkpoint

    overrides = ["progress=false", "num_rounds=3", "num_clients=3", "fraction_evaluate=0.0", "compression=topk",
                 "compression.ratio=0.05", "compression.error_feedback=true"]
    run_experiment(compose_experiment(overrides), tmp_path / "alone", show_progress=False)
    stop_after_checkpoint(monkeypatch, overrides, tmp_path / "stopped", 2)
    run_experiment(compose_experiment(overrides), tmp_path / "stopped", show_progress=False, resume=True)
    assert untimed_metrics(tmp_path / "stopped") == untimed_metrics(tmp_path / "alone")
