"""Every name that crosses the wire between fedsim's ServerApp, its strategies and its ClientApp.

A key is defined here once; the server, the strategies, the ClientApp and the engines import it from here. Records
are the named parts of a Flower message's RecordDict; config keys travel in the `config` ConfigRecord; metric keys
in a reply's `metrics` MetricRecord.
"""

from __future__ import annotations

# --- records of a message's RecordDict --------------------------------------------------------------------------
ARRAYS_RECORD = "arrays"
CONFIG_RECORD = "config"
METRICS_RECORD = "metrics"
IDENTITY_RECORD = "identity"  # a query reply: which partition the node holds

# --- config keys the server sends ---------------------------------------------------------------------------------
CONFIG_KEY = "fedsim-config"  # the resolved experiment, as JSON (`fedsim.protocol.experiment`)
ROUND_KEY = "server-round"
# Keys a strategy may put in the train ConfigRecord to change a client's local work this round.
PROXIMAL_MU_KEY = "proximal-mu"
LOCAL_EPOCHS_KEY = "local-epochs"
LR_KEY = "lr"
MOMENTUM_KEY = "momentum"
# A strategy config's block naming the client optimiser of its paper's reference code (`momentum`, `weight_decay`);
# it takes precedence over `client.momentum` / `client.weight_decay`. The server removes it before building the
# strategy, and clients read it from the experiment they receive.
CLIENT_OPTIMIZER_KEY = "client_optimizer"
CLIENT_OPTIMIZER_FIELDS = ("momentum", "weight_decay")

# --- node config keys (read on a node, never sent) ----------------------------------------------------------------
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# --- reply metrics ---------------------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # n_k, the FedAvg weight
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"

# --- a compressed train reply (`fedsim.compression.message`) --------------------------------------------------
COMPRESSED_RECORD = "fedsim-compressed"  # an ArrayRecord holding one uint8 Array: the framed, encoded update
COMPRESSED_PAYLOAD = "payload"
