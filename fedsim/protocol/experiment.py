"""The experiment as it travels to clients: the resolved config, as JSON, in every train/evaluate ConfigRecord.

A client needs no config of its own: the same ClientApp serves the in-process engine, Flower's runtime and
deployment, and every random draw is keyed by values the experiment carries (seed, round, partition).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flwr.app import ConfigRecord

from .keys import CONFIG_KEY


def experiment_record(experiment: Mapping[str, Any]) -> ConfigRecord:
    """A fresh ConfigRecord carrying the experiment (strategies add their own keys to it)."""
    return ConfigRecord({CONFIG_KEY: json.dumps(experiment, sort_keys=True, default=str)})


@lru_cache(maxsize=8)
def _parse(text: str) -> dict[str, Any]:
    return json.loads(text)


def experiment_from_record(record: ConfigRecord) -> dict[str, Any]:
    """The experiment a message carries; a KeyError of one line when it was not sent by a fedsim ServerApp."""
    if CONFIG_KEY not in record:
        raise KeyError(f"the message's ConfigRecord has no '{CONFIG_KEY}': it was not sent by a fedsim ServerApp")
    return _parse(str(record[CONFIG_KEY]))
