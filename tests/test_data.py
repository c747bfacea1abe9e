"""Data sets load as Hugging Face Datasets, flwr-datasets partitioners apply, and client splits are sound."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedsim.config import compose_experiment, group_options
from fedsim.data import build_federation, load_data, partition_indices
from fedsim.errors import ConfigError, DataError
from fedsim.partitions import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

DIGITS = {"_target_": "fedsim.data.Digits", "name": "digits", "test_fraction": 0.2}


def test_digits_loads_offline_with_a_stratified_test_split():
    data = load_data(DIGITS, seed=0)
    assert isinstance(data.train, datasets.Dataset)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.train) + len(data.test_arrays) == 1797 and len(data.test_arrays) == 360
    assert 0.0 <= float(data.train_arrays.x.min()) and float(data.train_arrays.x.max()) <= 1.0
    test_share = np.bincount(data.test_arrays.y.numpy(), minlength=10) / 360
    assert np.abs(test_share - 0.1).max() < 0.01  # stratified
    np.testing.assert_array_equal(np.asarray(data.train["label"]), data.train_arrays.y.numpy())


def test_any_flwr_partitioner_yields_disjoint_covering_indices():
    data = load_data(DIGITS, seed=0)
    for partitioner in (IidPartitioner(7), DirichletPartitioner(7, "label", alpha=0.3, seed=1)):
        parts = partition_indices(data.train, partitioner)
        assert len(parts) == 7
        joined = np.concatenate(parts)
        assert len(joined) == len(set(joined.tolist())) == len(data.train)


def test_pathological_partition_gives_each_client_its_classes():
    data = load_data(DIGITS, seed=0)
    parts = partition_indices(data.train, PathologicalPartitioner(10, "label", num_classes_per_partition=2, seed=0))
    labels = data.train_arrays.y.numpy()
    assert all(len(np.unique(labels[rows])) <= 2 for rows in parts)


def test_dirichlet_alpha_controls_label_skew():
    """Smaller alpha concentrates each client's labels: the mean per-client label entropy drops."""

    def mean_entropy(alpha: float) -> float:
        federation = build_federation(compose_experiment([f"partition.alpha={alpha}",
                                                          "partition.min_partition_size=0"]))
        counts = federation.label_counts().astype(float)
        shares = counts / counts.sum(1, keepdims=True)
        return float(np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() for p in shares]))

    assert mean_entropy(0.1) < mean_entropy(1.0) < mean_entropy(100.0)
    assert mean_entropy(100.0) > 0.95 * np.log(10)


def test_client_splits_are_disjoint_deterministic_and_sized():
    federation = build_federation(compose_experiment(["client.val_fraction=0.25"]))
    for pid in range(federation.num_clients):
        train_rows, val_rows = federation.client_rows(pid)
        assert set(train_rows).isdisjoint(val_rows)
        assert len(train_rows) + len(val_rows) == len(federation.client_indices[pid])
        assert len(val_rows) == round(0.25 * len(federation.client_indices[pid]))
        again = federation.client_rows(pid)
        np.testing.assert_array_equal(train_rows, again[0])


def test_same_seed_same_partition_other_seed_other_partition():
    a = build_federation(compose_experiment(["seed=3"]))
    b = build_federation(compose_experiment(["seed=3"]))
    c = build_federation(compose_experiment(["seed=4"]))
    assert all(np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.client_indices, c.client_indices, strict=True))


def test_natural_partition_of_synthetic_is_one_client_per_device():
    federation = build_federation(compose_experiment(["dataset=synthetic", "partition=natural", "num_clients=30"]))
    ids = np.asarray(federation.data.train["client_id"])
    assert sorted(len(rows) for rows in federation.client_indices) == sorted(np.bincount(ids).tolist())
    for rows in federation.client_indices:
        assert len(np.unique(ids[rows])) == 1


def test_natural_partition_needs_matching_client_count():
    with pytest.raises(ConfigError, match="num_clients=30"):
        build_federation(compose_experiment(["dataset=synthetic", "partition=natural", "num_clients=10"]))


def test_local_tabular_parquet(tmp_path):
    rng = np.random.default_rng(0)
    table = {"f1": rng.normal(size=60).tolist(), "f2": rng.normal(size=60).tolist(),
             "target": rng.integers(0, 3, 60).tolist()}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "train.parquet"))
    experiment = compose_experiment(
        ["dataset=local", f"dataset.path={tmp_path / 'train.parquet'}", "dataset.label_column=target", "partition=iid",
         "num_clients=3"]
    )
    federation = build_federation(experiment)
    assert federation.data.input_shape == (2,) and federation.data.num_classes == 3
    assert len(federation.data.train) == 48 and len(federation.data.test_arrays) == 12


def test_local_image_parquet_gives_channel_first_tensors(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(20)]
    split = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(20)]})
    split = split.cast_column("image", datasets.Image())
    split.to_parquet(str(tmp_path / "train.parquet"))
    split.to_parquet(str(tmp_path / "test.parquet"))
    data = load_data(
        {"_target_": "fedsim.data.LocalFiles", "name": "local", "format": "parquet",
         "path": str(tmp_path / "train.parquet"), "test_path": str(tmp_path / "test.parquet"), "test_fraction": 0.2,
         "image_column": "image", "label_column": "label"},
        seed=0,
    )
    assert data.input_shape == (3, 12, 12)
    np.testing.assert_allclose(data.train_arrays.x[0].permute(1, 2, 0).numpy() * 255, np.asarray(images[0]), atol=1e-3)


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data({"_target_": "fedsim.data.LocalFiles", "name": "local", "format": "csv",
                   "path": str(tmp_path / "none.csv"), "test_path": None, "test_fraction": 0.2,
                   "image_column": "image", "label_column": "label"}, seed=0)


def test_hub_dataset_without_internet_fails_with_one_line(monkeypatch):
    from fedsim.data import hub

    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DataError) as raised:
        load_data(compose_experiment(["dataset=mnist"])["dataset"], seed=0)
    message = str(raised.value)
    assert "\n" not in message and "dataset=local" in message and "ylecun/mnist" in message


def test_local_csv_and_imagefolder(tmp_path):
    rng = np.random.default_rng(1)
    csv_path = tmp_path / "table.csv"
    datasets.Dataset.from_dict({"a": rng.normal(size=30).tolist(), "b": rng.normal(size=30).tolist(),
                                "label": (np.arange(30) % 2).tolist()}).to_csv(str(csv_path))
    table = load_data({"_target_": "fedsim.data.LocalFiles", "name": "local", "format": "csv", "path": str(csv_path),
                       "test_path": None, "test_fraction": 0.2, "image_column": "image",
                       "label_column": "label"}, seed=0)
    assert table.input_shape == (2,) and len(table.train) == 24

    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    folder = load_data({"_target_": "fedsim.data.LocalFiles", "name": "local", "format": "imagefolder",
                        "path": str(tmp_path / "images"), "test_path": None, "test_fraction": 0.2,
                        "image_column": "image", "label_column": "label"}, seed=0)
    assert folder.input_shape == (1, 6, 6) and folder.num_classes == 2 and len(folder.train) == 8


def test_niid2_gives_two_class_clients_and_one_uniform_client():
    from fedsim.partitions import LabelShardsWithIidPartitioner

    data = load_data(DIGITS, seed=0)
    parts = partition_indices(data.train, LabelShardsWithIidPartitioner(6, num_iid_partitions=1, seed=0))
    labels = data.train_arrays.y.numpy()
    joined = np.concatenate(parts)  # shards of 1437 // 10 // 6 = 23 rows; the 57 rows past them belong to no one
    assert len(joined) == len(set(joined.tolist())) == 6 * 230
    for client in range(5):  # client i holds 5 shards of classes 2i and 2i+1, nothing else
        assert set(labels[parts[client]].tolist()) == {2 * client, 2 * client + 1} and len(parts[client]) == 230
    assert np.bincount(labels[parts[5]], minlength=10).tolist() == [23] * 10


# --- local tables: format from the suffix, text features one-hot, one line for every file that cannot train ----------

LOCAL = {"_target_": "fedsim.data.LocalFiles", "name": "local", "format": "auto", "test_path": None,
         "test_fraction": 0.25, "image_column": "image", "label_column": "label"}
CITIES = ["berlin", "paris", "rome", "oslo"]


def _city_table(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({"size": rng.normal(50, 10, rows).round(2), "city": [CITIES[i % 4] for i in range(rows)],
                         "label": (np.arange(rows) // 2) % 2})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json", ".jsonl", ".csv.gz"])
def test_a_local_table_is_read_by_its_suffix_and_text_columns_are_one_hot_as_adults(tmp_path, suffix):
    table = _city_table()
    path = tmp_path / f"houses{suffix}"
    if suffix == ".parquet":
        table.to_parquet(path)
    elif suffix.startswith(".json"):
        table.to_json(path, orient="records", lines=suffix == ".jsonl")
    else:
        table.to_csv(path, index=False)
    data = load_data({**LOCAL, "path": str(path)}, seed=0)
    assert data.input_shape == (1 + len(CITIES),) and data.num_classes == 2
    assert len(data.train_arrays) == 30 and len(data.test_arrays) == 10
    x = np.concatenate([data.train_arrays.x.numpy(), data.test_arrays.x.numpy()])
    y = np.concatenate([data.train_arrays.y.numpy(), data.test_arrays.y.numpy()])
    assert set(x[:, 1:].sum(1).tolist()) == {1.0}  # one city per row, one-hot in sorted order
    cities = [sorted(CITIES)[i] for i in x[:, 1:].argmax(1)]
    assert (sorted(zip(cities, y.tolist(), strict=True))
            == sorted(zip(table["city"], table["label"].tolist(), strict=True)))
    train_sizes = data.train_arrays.x[:, 0].numpy()
    assert abs(float(train_sizes.mean())) < 1e-5 and abs(float(train_sizes.std()) - 1) < 1e-4  # standardised on train


def test_local_features_match_the_shared_encoder_row_for_row(tmp_path):
    from fedsim.data.tabular import encode_features

    table = _city_table()
    table.to_csv(tmp_path / "houses.csv", index=False)
    (tmp_path / "test.csv").write_text("size,city,label\n51.5,paris,1\n47.0,lisbon,0\n")
    data = load_data({**LOCAL, "path": str(tmp_path / "houses.csv"), "test_path": str(tmp_path / "test.csv")}, seed=0)
    both = pd.concat([table, pd.read_csv(tmp_path / "test.csv")], ignore_index=True)
    expected = encode_features(both.drop(columns=["label"]), np.arange(40))
    np.testing.assert_array_equal(data.train_arrays.x.numpy(), expected[:40])
    np.testing.assert_array_equal(data.test_arrays.x.numpy(), expected[40:])
    # size, then city_berlin, city_lisbon, city_oslo, city_paris, city_rome: a test-only city gets its own column
    assert data.input_shape == (6,) and data.test_arrays.x[1, 2] == 1.0 and data.train_arrays.x[:, 2].sum() == 0


def test_local_text_labels_become_sorted_classes(tmp_path):
    (tmp_path / "t.csv").write_text("a,label\n" + "".join(f"{i},{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    data = load_data({**LOCAL, "path": str(tmp_path / "t.csv")}, seed=0)
    assert data.num_classes == 2
    labels = np.concatenate([data.train_arrays.y.numpy(), data.test_arrays.y.numpy()])
    a = np.concatenate([data.train_arrays.x[:, 0].numpy(), data.test_arrays.x[:, 0].numpy()])
    assert np.all((labels == 1) == (np.argsort(np.argsort(a)) % 2 == 1))  # "yes" (odd a) is class 1, "no" class 0


HEADER = "size,city,label\n"
BAD_TABLES = [
    ("empty.csv", "", "the file is empty"),
    ("header.csv", HEADER, "has a header (size, city, label) but no rows"),
    ("nolabel.csv", "size,city\n1,rome\n2,oslo\n",
     "dataset.label_column='label' is not one of its columns (size, city)"),
    ("onlylabel.csv", "label\n0\n1\n", "there are no features"),
    ("oneclass.csv", HEADER + "1,rome,3\n2,oslo,3\n4,rome,3\n", "has a single class (3)"),
    ("nanlabel.csv", HEADER + "1,rome,0\n2,oslo,\n4,rome,1\n", "label column 'label' has 1 missing value (data row 2)"),
    ("nanfeature.csv", HEADER + "1,rome,0\n,oslo,1\n4,rome,1\n,rome,0\n",
     "column 'size' has 2 missing values (data rows 2, 4)"),
    ("inf.csv", HEADER + "1,rome,0\ninf,oslo,1\n4,rome,1\n", "column 'size' has 1 infinite value (data row 2)"),
    ("typo.csv", HEADER + "1,rome,0\n2,oslo,1\n?,rome,1\n4,rome,0\n",
     "column 'size' holds numbers but also text ('?' at data row 3)"),
    ("ids.csv", "id,label\n" + "".join(f"user{i},{i % 2}\n" for i in range(50)),
     "column 'id' is text with 50 distinct values in 50 rows"),
    ("regression.csv", HEADER + "1,rome,0.5\n2,oslo,1\n", "holds non-integer numbers (0.5 at data row 1)"),
    ("notes.txt", HEADER + "1,rome,0\n", "cannot tell its format from its name"),
    ("broken.parquet", "not parquet", "cannot be read as parquet"),
]


@pytest.mark.parametrize("name, content, expected", BAD_TABLES, ids=[case[0] for case in BAD_TABLES])
def test_a_local_table_that_cannot_train_is_one_line_naming_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as raised:
        load_data({**LOCAL, "path": str(path)}, seed=0)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_a_local_test_file_must_have_the_training_columns(tmp_path):
    _city_table().to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "test.csv").write_text("size,town,label\n1,rome,0\n")
    with pytest.raises(DataError, match=r"dataset.test_path=.*test.csv: its columns differ "
                                        r".* it lacks city and has town besides"):
        load_data({**LOCAL, "path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv")}, seed=0)
    (tmp_path / "test.csv").write_text("size,city,label\n1,2,0\n")
    with pytest.raises(DataError, match="column 'city' holds numbers, but text in"):
        load_data({**LOCAL, "path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv")}, seed=0)


@pytest.mark.slow  # a fedsim process each: 8 s on 2 idle cores, most of it imports
@pytest.mark.parametrize("content, expected", [(HEADER, "but no rows"),
                                               (HEADER + "1,rome,1\n2,oslo,1\n", "single class")])
def test_the_cli_refuses_a_bad_local_table_in_one_line_before_training(tmp_path, content, expected):
    import subprocess
    import sys

    path = tmp_path / "table.csv"
    path.write_text(content)
    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "dataset=local", f"dataset.path={path}",
                                f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=300)
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2 and len(lines) == 1, completed.stderr
    assert str(path) in lines[0] and expected in lines[0]
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("name", group_options("dataset"))
def test_every_dataset_config_names_a_loader_taking_its_keys(name):
    """A `dataset` entry is its loader's arguments: the loader builds from it (nothing loads yet) and declares
    constraints only on arguments it takes."""
    import dataclasses

    from fedsim.build import locate
    from fedsim.data import DatasetLoader
    from fedsim.protocol.constraints import parameter_constraints

    required = {"hf": ["dataset.hub_id=org/set"], "local": ["dataset.path=train.csv"]}.get(name, [])
    dataset = compose_experiment([f"dataset={name}", *required])["dataset"]
    cls = locate(dataset.pop("_target_"))
    assert isinstance(cls(**dataset), DatasetLoader)
    assert set(parameter_constraints(cls)) <= {field.name for field in dataclasses.fields(cls)}
