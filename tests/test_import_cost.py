"""`import fedsim.client` stays light: Flower starts one ClientApp process per message in deployment, so the data
libraries load with the first message that needs data, not at import. Each check runs in a fresh interpreter, since
this test process has long since imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsim.build import build_model
from fedsim.client import app as client_app
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.data.federation import federation_for

from .conftest import train_message

HEAVY = ("datasets", "sklearn", "scipy", "matplotlib", "pandas", "hydra", "omegaconf", "flwr_datasets", "pyarrow")

# Imports the ClientApp alone, notes which heavy modules that loaded, then has it answer a train message built from
# the files the test wrote (the experiment as JSON, the global model's weights): the handler imports the rest itself.
TRAIN_AFTER_LIGHT_IMPORT = """
import json, sys
import fedsim.client
loaded = [name for name in {heavy!r} if name in sys.modules]
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedsim.protocol.keys import ROUND_KEY
from fedsim.protocol.experiment import experiment_record

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
experiment = json.load(open({experiment!r}))
config = experiment_record(experiment)
config[ROUND_KEY] = 1
content = RecordDict({{"arrays": ArrayRecord(torch.load({weights!r})), "config": config}})
message = Message(content, dst_node_id=7, message_type=MessageType.TRAIN)
message.metadata.__dict__["_message_id"] = "m1"
context = Context(run_id=1, node_id=7, node_config={{"partition-id": 1}}, state=RecordDict(), run_config={{}})
reply = fedsim.client.app(message, context)
assert not reply.has_error(), reply.error.reason
torch.save({{"loaded": loaded, "metrics": dict(reply.content["metrics"]),
             "arrays": reply.content["arrays"].to_torch_state_dict()}}, {out!r})
"""


def _python(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_importing_the_client_app_loads_no_data_library():
    code = f"import sys, fedsim.client; print([name for name in {HEAVY!r} if name in sys.modules])"
    assert _python(code).strip() == "[]"


def test_a_light_client_app_trains_as_a_fully_imported_one(tmp_path):
    """The handler pulls in data, Hydra and the strategies' client halves on its first message, with the same reply."""
    experiment = resolve_auto_values(compose_experiment(["num_clients=3", "num_rounds=1", "device=cpu"]))
    weights = build_model(experiment, federation_for(experiment).data).state_dict()
    (tmp_path / "experiment.json").write_text(json.dumps(experiment, default=str))
    torch.save(weights, tmp_path / "weights.pt")
    _python(TRAIN_AFTER_LIGHT_IMPORT.format(heavy=HEAVY, experiment=str(tmp_path / "experiment.json"),
                                            weights=str(tmp_path / "weights.pt"), out=str(tmp_path / "reply.pt")))
    light = torch.load(tmp_path / "reply.pt")
    assert light["loaded"] == []

    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    reply = client_app(train_message(experiment, weights), context)
    assert not reply.has_error(), reply.error.reason
    assert light["metrics"] == pytest.approx(dict(reply.content["metrics"]), rel=1e-6)
    torch.testing.assert_close(light["arrays"], reply.content["arrays"].to_torch_state_dict())
