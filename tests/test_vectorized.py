"""engine=vectorized trains a round's cohort at once and gives the in-process engine's results (float rounding).

It trains only what the ClientApp's plan calls plain local training and the cohort kernel supports; the rest goes to
the ClientApp."""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedsim.build import build_model, traits_of
from fedsim.client import app as client_app
from fedsim.client_plan import LocalTraining, NeedsClientApp, plan
from fedsim.config import compose_experiment, resolve_auto_values, validate
from fedsim.data.federation import federation_for
from fedsim.data.tensors import ArrayDataset
from fedsim.engines import VectorizedEngine, VectorizedGrid, make_engine
from fedsim.engines import vectorized as vectorized_module
from fedsim.engines.cohort import supports, train_cohort, unbatchable_reason
from fedsim.engines.inprocess import FIRST_NODE_ID, RUN_ID
from fedsim.errors import ConfigError
from fedsim.models import CNN, MLP, ResNet
from fedsim.node_config import MISBEHAVE
from fedsim.protocol.experiment import experiment_record
from fedsim.protocol.keys import PARTITION_ID, PROXIMAL_MU_KEY, ROUND_KEY
from fedsim.training import ProximalTerm, TrainSettings, local_objectives, train_local

from .conftest import read_metrics

REL = 1e-5


class BatchNormNet(nn.Module):
    """A model vmap cannot batch in training mode (for the fallback test)."""

    def __init__(self, input_shape, num_classes) -> None:
        super().__init__()
        width = int(torch.tensor(input_shape).prod())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))


def test_train_cohort_matches_train_local_member_by_member():
    """Unequal sizes, epochs, lr, momentum and mu in one cohort; weight decay shared: each member as if alone."""
    torch.manual_seed(0)
    model = MLP([6], 3, hidden=[8])
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    members = []
    for i, (n, epochs, lr, momentum, mu) in enumerate([(7, 2, 0.1, 0.9, 0.0), (20, 1, 0.05, 0.0, 0.5),
                                                        (33, 3, 0.2, 0.5, 0.1), (1, 2, 0.1, 0.9, 0.0)]):
        generator = torch.Generator().manual_seed(100 + i)
        data = ArrayDataset(torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        settings = TrainSettings(epochs=epochs, batch_size=4, lr=lr, momentum=momentum, weight_decay=0.01,
                                 proximal_mu=mu)
        members.append(LocalTraining(data, settings, seed=1000 + i, start=ArrayRecord(start),
                                     objectives=local_objectives(settings)))
    trained, results = train_cohort(model, members, torch.device("cpu"))
    for member, weights, result in zip(members, trained, results, strict=True):
        alone = MLP([6], 3, hidden=[8])
        alone.load_state_dict(start)
        expected = train_local(alone, member.data, member.settings, torch.Generator().manual_seed(member.seed),
                               torch.device("cpu"))
        for name, value in alone.state_dict().items():
            assert _relative(value, weights[name]) < REL, name
        assert result.num_examples == expected.num_examples and result.steps == expected.steps
        assert result.loss == pytest.approx(expected.loss, rel=REL)
        assert result.accuracy == pytest.approx(expected.accuracy, abs=1e-9)


def test_models_that_batch_and_one_that_does_not():
    assert unbatchable_reason(MLP([1, 8, 8], 10)) is None
    assert unbatchable_reason(CNN([1, 8, 8], 10, channels=[2, 4], hidden=8)) is None
    assert unbatchable_reason(ResNet([3, 8, 8], 10, blocks=[1], widths=[4])) is None  # GroupNorm batches
    assert "BatchNorm1d" in unbatchable_reason(BatchNormNet([4], 2))


def _recorded_cohorts(monkeypatch) -> list:
    """The cohorts the vectorized engine trains from now on, each a list of LocalTraining plans."""
    seen: list = []
    original = vectorized_module.train_cohort

    def recording(model, members, device):
        seen.append(members)
        return original(model, members, device)

    monkeypatch.setattr(vectorized_module, "train_cohort", recording)
    return seen


def _compare(run_quietly, overrides, monkeypatch, engine_options=()):
    """Run in-process and vectorized; return the largest relative difference of the final weights and check
    metrics.csv row by row; also return the cohorts the vectorized engine trained (lists of LocalTraining)."""
    seen = _recorded_cohorts(monkeypatch)
    _, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    _, vec_dir = run_quietly(*overrides, "engine=vectorized", *engine_options, name="vectorized")
    assert seen, "the vectorized engine batched no training message"
    for a, b in zip(read_metrics(local_dir), read_metrics(vec_dir), strict=True):
        assert a["sampled"] == b["sampled"]
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=REL)
        if a["train_loss"]:
            assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=REL)
    local = torch.load(local_dir / "model.pt", weights_only=False)
    vec = torch.load(vec_dir / "model.pt", weights_only=False)
    worst = max(_relative(local[key], vec[key]) for key in local if key != "__fedsim__")
    print(f"max relative weight difference: {worst:.2e}")
    assert worst < REL
    return worst, seen


# MLP on digits with Dirichlet(0.5) sizes, momentum 0.9: the default experiment, shortened.
BASE = ("num_rounds=3", "num_clients=6", "seed=3", "client.local_epochs=2", "fraction_evaluate=0.0")


def test_fedavg_mlp_unequal_clients_momentum(run_quietly, monkeypatch):
    _, seen = _compare(run_quietly, (*BASE, "fraction_train=0.7"), monkeypatch)
    assert len({len(m.data) for m in seen[0]}) > 1  # unequal client sizes in one cohort


def test_fedprox_stragglers_weight_decay(run_quietly, monkeypatch):
    overrides = (*BASE, "strategy=fedprox", "strategy.proximal_mu=0.5", "stragglers.fraction=0.5",
                 "client.local_epochs=3", "client.weight_decay=0.01")
    _, seen = _compare(run_quietly, overrides, monkeypatch)
    settings = [m.settings for cohort in seen for m in cohort]
    assert {s.epochs for s in settings} > {3}  # stragglers' shorter local work rode along in the same cohort
    assert all(m.objectives == (ProximalTerm(0.5),) for cohort in seen for m in cohort)


def test_cnn_in_chunks(run_quietly, monkeypatch):
    overrides = ("num_rounds=2", "num_clients=5", "seed=5", "client.local_epochs=1", "fraction_evaluate=0.0",
                 "model=cnn", "model.channels=[4,8]", "model.hidden=16")
    _, seen = _compare(run_quietly, overrides, monkeypatch, ("engine.max_cohort=2",))
    assert [len(c) for c in seen] == [2, 2, 1, 2, 2, 1]


def test_faults_go_client_by_client_and_results_still_match(run_quietly, monkeypatch):
    _, seen = _compare(run_quietly, (*BASE, "faults.crash_rate=0.3", "faults.nan_rate=0.2"), monkeypatch)
    assert sum(len(c) for c in seen) < 3 * 6  # the faulty ones went to the ClientApp


def test_a_compressed_cohort_stays_batched_and_sends_what_the_client_app_sends(run_quietly, monkeypatch, tmp_path):
    """With a compressor the cohort still trains stacked; its replies are encoded as the ClientApp encodes them: the
    same payload sizes, and the same results up to float16 rounding of the cohort's float32 differences (1e-5, as
    in `_compare`, can move an update entry across a float16 rounding boundary: 5e-4 of its value)."""
    seen = _recorded_cohorts(monkeypatch)
    overrides = (*BASE, "compression=fp16", "compression.error_feedback=true")
    _, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    _, vec_dir = run_quietly(*overrides, "engine=vectorized", name="vectorized")
    assert sum(len(cohort) for cohort in seen) == 3 * 6  # every training message was batched
    local, vectorized = read_metrics(local_dir), read_metrics(vec_dir)
    assert [row["bytes_up"] for row in local] == [row["bytes_up"] for row in vectorized]
    for a, b in zip(local, vectorized, strict=True):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-3)
    experiment = compose_experiment(list(BASE))
    plain = 4 * sum(p.numel() for p in build_model(experiment, federation_for(experiment).data).parameters())
    assert int(local[1]["bytes_up"]) < int(local[1]["train_clients"]) * plain * 0.55  # float16: half of float32


def test_batchnorm_model_falls_back_with_a_notice(run_quietly, monkeypatch, caplog):
    overrides = ("num_rounds=1", "num_clients=3", "model=logreg", "model._target_=tests.test_vectorized.BatchNormNet",
                 "engine=vectorized", "fraction_evaluate=0.0")
    called = []
    monkeypatch.setattr(vectorized_module, "train_cohort", lambda *a: called.append(a))
    with caplog.at_level(logging.WARNING, logger="fedsim.engines.vectorized"):
        summary, _ = run_quietly(*overrides)
    notices = [r.getMessage() for r in caplog.records if "engine=vectorized" in r.getMessage()]
    assert len(notices) == 1 and "BatchNorm1d" in notices[0] and "client by client" in notices[0]
    assert not called and summary


def test_engine_config():
    assert isinstance(make_engine({"_target_": "fedsim.engines.VectorizedEngine", "name": "vectorized"}),
                      VectorizedEngine)
    assert make_engine({"_target_": "fedsim.engines.VectorizedEngine", "max_cohort": 8}).max_cohort == 8
    experiment = resolve_auto_values(compose_experiment(["engine=vectorized", "engine.max_cohort=0"]))
    with pytest.raises(ConfigError, match="engine.max_cohort"):
        validate(experiment)


def test_w1_workload_pieces():
    """dataset=random and the unpadded CNN that bench/sim_throughput.py uses for W1."""
    from fedsim.data.federation import load_data

    data = load_data({"_target_": "fedsim.data.RandomImages", "name": "random", "num_samples": 40, "shape": [1, 28, 28],
                      "num_classes": 10, "test_samples": 5}, seed=0)
    assert data.input_shape == (1, 28, 28) and len(data.train) == 40 and len(data.test_arrays) == 5
    model = CNN([1, 28, 28], 10, channels=[16, 32], hidden=128, padding=0)
    assert [tuple(p.shape) for p in model.parameters()] == [
        (16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (128, 512), (128,), (10, 128), (10,)]
    assert model(data.train_arrays.x[:2]).shape == (2, 10)
    with pytest.raises(ConfigError, match="dataset.shape"):
        validate(resolve_auto_values(compose_experiment(["dataset=random", "dataset.shape=[0]"])))


# --- what the grid trains is what the ClientApp's plan calls plain local training ---------------------------------


class _ClientAppSpy:
    """fedsim's ClientApp, noting the nodes it answered."""

    def __init__(self) -> None:
        self.nodes: list[int] = []

    def __call__(self, message: Message, context: Context) -> Message:
        self.nodes.append(context.node_id)
        return client_app(message, context)


class _UnknownTerm:
    """A local objective term the cohort kernel does not declare."""

    def __call__(self, params, anchor):
        return 0.0 * sum(torch.sum(p) for p in params)


def _experiment(*overrides: str) -> dict:
    return resolve_auto_values(compose_experiment(["num_clients=4", "device=cpu", "client.local_epochs=2", *overrides]))


def _global_arrays(experiment: dict) -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(build_model(experiment, federation_for(experiment).data).state_dict())


def _train_message(experiment: dict, arrays: ArrayRecord, partition_id: int, keys: dict | None = None) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    config = experiment_record(experiment)
    config[ROUND_KEY] = 1
    config.update(keys or {})
    message = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=FIRST_NODE_ID + partition_id,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = f"m{partition_id}"
    return message


def _context(partition_id: int, node_config: dict | None = None) -> Context:
    return Context(run_id=RUN_ID, node_id=FIRST_NODE_ID + partition_id,
                   node_config={PARTITION_ID: partition_id, **(node_config or {})}, state=RecordDict(), run_config={})


def _route(monkeypatch, experiment: dict, messages: list[Message], node_config: dict | None = None):
    """Send TRAIN messages through a vectorized grid: (replies, nodes the ClientApp answered, clients batched)."""
    cohorts = _recorded_cohorts(monkeypatch)
    spy = _ClientAppSpy()
    extras = {message.metadata.dst_node_id - FIRST_NODE_ID: node_config or {} for message in messages}
    grid = VectorizedGrid(spy, int(experiment["num_clients"]), node_config_extras=extras)
    replies = list(grid.send_and_receive(messages))
    return replies, spy.nodes, sum(len(cohort) for cohort in cohorts)


def test_plain_local_training_is_batched_and_answered_as_the_client_app_would(monkeypatch):
    experiment = _experiment("strategy=fedprox")
    arrays = _global_arrays(experiment)
    messages = [_train_message(experiment, arrays, pid, {PROXIMAL_MU_KEY: 0.5}) for pid in range(3)]
    planned = plan(messages[0], _context(0))
    assert isinstance(planned, LocalTraining) and planned.objectives == (ProximalTerm(0.5),)
    assert supports(planned) is None
    replies, answered, batched = _route(monkeypatch, experiment, messages)
    assert answered == [] and batched == 3
    for pid, (message, batched_reply) in enumerate(zip(messages, replies, strict=True)):
        alone = client_app(message, _context(pid))
        assert list(batched_reply.content["metrics"]) == list(alone.content["metrics"])
        assert dict(batched_reply.content["metrics"]) == pytest.approx(dict(alone.content["metrics"]), rel=REL)
        expected = alone.content["arrays"].to_torch_state_dict()
        got = batched_reply.content["arrays"].to_torch_state_dict()
        assert list(got) == list(expected)
        assert max(_relative(expected[name], got[name]) for name in expected) < REL


@pytest.mark.parametrize("overrides, ask, node_config, reason", [
    (("strategy=qffl",), True, {}, "asks for"),
    (("faults.nan_rate=1.0",), False, {}, "fault"),
    ((), False, {MISBEHAVE: "sign-flip"}, "misbehave"),
], ids=["asked-request", "fault", "misbehaviour"])
def test_a_round_beyond_local_training_is_answered_by_the_client_app(monkeypatch, overrides, ask, node_config, reason):
    experiment = _experiment(*overrides)
    keys = {traits_of(experiment).client_requests[0].key: True} if ask else {}
    message = _train_message(experiment, _global_arrays(experiment), 1, keys)
    planned = plan(message, _context(1, node_config))
    assert isinstance(planned, NeedsClientApp) and reason in planned.reason
    (answer,), answered, batched = _route(monkeypatch, experiment, [message], node_config)
    assert answered == [FIRST_NODE_ID + 1] and batched == 0 and not answer.has_error()


def test_local_debiasing_is_planned_with_sample_weights_the_kernel_does_not_batch(monkeypatch):
    experiment = _experiment("dataset=fair_synthetic", "dataset.num_samples=400", "model=logreg",
                             "client.local_debiasing=reweighing")
    message = _train_message(experiment, _global_arrays(experiment), 1)
    planned = plan(message, _context(1))
    assert isinstance(planned, LocalTraining) and planned.sample_weights is not None
    assert "sample weights" in supports(planned)
    (answer,), answered, batched = _route(monkeypatch, experiment, [message])
    assert answered == [FIRST_NODE_ID + 1] and batched == 0 and not answer.has_error()


@pytest.mark.parametrize("change", [
    lambda planned: dataclasses.replace(planned, objectives=(*planned.objectives, _UnknownTerm())),
    lambda planned: dataclasses.replace(planned, sample_weights=torch.ones(len(planned.data))),
], ids=["unknown-objective-term", "sample-weights"])
def test_a_client_behaviour_the_kernel_does_not_declare_is_not_batched(monkeypatch, change):
    """A new client behaviour described in the plan turns batching off instead of making the engines differ."""
    real_plan = vectorized_module.plan
    monkeypatch.setattr(vectorized_module, "plan", lambda message, context: change(real_plan(message, context)))
    experiment = _experiment()
    arrays = _global_arrays(experiment)
    messages = [_train_message(experiment, arrays, pid) for pid in range(2)]
    assert supports(change(real_plan(messages[0], _context(0)))) is not None
    replies, answered, batched = _route(monkeypatch, experiment, messages)
    assert answered == [FIRST_NODE_ID, FIRST_NODE_ID + 1] and batched == 0
    assert not any(reply.has_error() for reply in replies)


def test_the_vectorized_engine_imports_no_strategy():
    """What a strategy asks of clients reaches the engine only through the ClientApp's plan."""
    from fedsim.engines import cohort as cohort_module

    for module in (vectorized_module, cohort_module):
        imported = set()
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {node.module or ""} | {alias.name for alias in node.names}
        assert not {name for name in imported if "strateg" in name or name in ("traits_of", "locate", "importlib")}
