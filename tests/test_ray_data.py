"""Featurising on Ray Data, against a local Ray of 2 CPUs that this module starts once (loopback only): the features
are the CLI's bit for bit (image files, WebDataset tars, a Parquet dataset through `extract --ray`), failures land
in the errors file with the CLI's reasons, a model actor killed mid-run costs a retry (every image once), the
output loads with `datasets`, and the actors are sized so that something is left to read and decode."""

import os
import signal
from pathlib import Path

import datasets
import pytest
import ray
from dataset_helpers import BAD_IMAGES, GOOD_IMAGES, image_files, write_parquet_dataset
from extraction_helpers import REPO_ROOT, assert_rows_equal, make_image_folder, run_cli
from golden import GOLDEN_IMAGES, golden_image_path
from test_dataset_shares import write_tars
from test_datasets import extract_args, extract_in_process, our_rows

from butd_frcnn.extraction import ExtractionError, ExtractOptions
from butd_frcnn.extraction.defaults import DEFAULT_MAX_PIXELS
from butd_frcnn.extraction.ray_data import (
    FeaturizeImages,
    _actor_resources,
    featurize,
    read_image_files,
    read_webdataset_images,
    write_features,
)


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module: 2 CPUs, no dashboard; its workers import this checkout and the tests."""
    env = {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}", "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir) -> Path:
    from extraction_helpers import save_test_model

    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_dir) -> dict[str, Path]:
    """The golden images and a few bad files, by id."""
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    golden = {name: golden_image_path(name) for name in GOLDEN_IMAGES}
    return {**golden, **image_files(root, GOOD_IMAGES[:2]), **image_files(root, BAD_IMAGES[:4])}


def errors_of(output: Path) -> list[str]:
    path = Path(f"{output}.errors.tsv")
    return sorted(path.read_text().splitlines()) if path.exists() else []


def test_features_through_ray_are_the_clis(ray_address, model_folder, files, tmp_path):
    listed = [str(path) for path in files.values()]
    extract_in_process(model_folder, tmp_path / "cli", inputs=listed, max_pixels=DEFAULT_MAX_PIXELS)
    dataset = featurize(read_image_files(listed), str(model_folder), rows_per_call=4)
    sink = write_features(dataset, tmp_path / "ray")
    expected = our_rows(tmp_path / "cli")
    assert (sink.extracted, sink.failed) == (len(expected), len(BAD_IMAGES[:4]))
    assert_rows_equal(our_rows(tmp_path / "ray"), expected)  # bit for bit, every id once
    assert errors_of(tmp_path / "ray") == errors_of(tmp_path / "cli")  # the same ids, places and reasons
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "ray"), split="train")
    assert loaded.features["features"] == datasets.List(datasets.List(datasets.Value("float32"), length=256))
    assert sorted(loaded["image_id"]) == sorted(expected)


class KilledOnceFeaturizer(FeaturizeImages):
    """Kills its own process (SIGKILL, as the OOM killer or a lost node does) on its second batch, the first time
    round: the rows of its first batch are already on their way to the writer."""

    def __init__(self, model: str, marker: str, **options):
        super().__init__(model, **options)
        self.marker, self.calls = Path(marker), 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_a_killed_actor_costs_a_retry_not_a_hole_or_a_duplicate(ray_address, model_folder, files, tmp_path):
    """Over WebDataset tars (broken samples included): the actor dies mid-run, Ray restarts it and reruns its batch."""
    tars = write_tars(tmp_path / "tars", {key: files[key] for key in GOLDEN_IMAGES}, 2)
    extract_in_process(model_folder, tmp_path / "cli", dataset=str(tmp_path / "tars"), max_pixels=DEFAULT_MAX_PIXELS)
    decoded = read_webdataset_images([str(tar) for tar in tars])
    marker = tmp_path / "killed"
    decoded = featurize(decoded, str(model_folder), rows_per_call=2,
                        featurizer=KilledOnceFeaturizer, marker=str(marker))  # fmt: skip
    write_features(decoded, tmp_path / "ray")
    assert marker.exists(), "the actor was never killed"
    rows = our_rows(tmp_path / "ray")  # read_features refuses an id written twice
    expected = our_rows(tmp_path / "cli")
    assert sorted(rows) == sorted(expected)
    assert_rows_equal(rows, expected)
    assert [line.split("\t")[0] for line in errors_of(tmp_path / "ray")] == ["caption_only", "garbled"]
    assert errors_of(tmp_path / "ray") == errors_of(tmp_path / "cli")  # the same ids, places and reasons


def test_cli_ray_over_a_parquet_dataset(ray_address, model_folder, files, tmp_path):
    parquet = write_parquet_dataset(tmp_path / "parquet", {key: files[key] for key in list(files)[-6:]})
    extract_in_process(model_folder, tmp_path / "cli", dataset=str(parquet), id_column="name")
    completed = run_cli(*extract_args(model_folder, tmp_path / "ray", "--format", "parquet"), "--dataset", parquet,
                        "--id-column", "name", "--ray", ray_address)  # fmt: skip
    assert "Done: 2 images extracted" in completed.stdout and "1 model actors" in completed.stdout
    assert_rows_equal(our_rows(tmp_path / "ray"), our_rows(tmp_path / "cli"))
    ray_errors = [line.split("\t") for line in errors_of(tmp_path / "ray")]
    cli_errors = [line.split("\t") for line in errors_of(tmp_path / "cli")]
    assert [(e[0], e[2].split(": ", 1)[-1]) for e in ray_errors] == [
        (e[0], e[2].split(": ", 1)[-1]) for e in cli_errors
    ]
    assert {"no_image", "garbage"} <= {e[0] for e in ray_errors}
    # without an id column, Ray's parallel reads have no row numbers to name the rows by
    completed = run_cli(*extract_args(model_folder, tmp_path / "x", "--format", "parquet"), "--dataset", parquet,
                        "--ray", ray_address, check=False)  # fmt: skip
    assert completed.returncode == 1 and "--id-column" in completed.stderr and "Traceback" not in completed.stderr


def test_an_unreachable_cluster_is_one_line(model_folder, tmp_path):
    completed = run_cli(*extract_args(model_folder, tmp_path / "out", "--format", "parquet"), tmp_path,
                        "--ray", "127.0.0.1:1", check=False)  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        (
            "ERROR: --ray 127.0.0.1:1: cannot connect to a Ray cluster there (ConnectionRefusedError: [Errno 111] "
            "Connection refused). Start one (ray start --head) or give its address (host:6379)"
        )
    ]


def test_actors_leave_a_cpu_to_read_and_decode(ray_address, model_folder):
    options = ExtractOptions(model=str(model_folder), output=Path("x"))
    assert _actor_resources(ray, options, None, 1) == {"actors": 1, "actor_cpus": 1, "actor_gpus": 0}
    assert _actor_resources(ray, options, None, 0.5)["actors"] == 2
    with pytest.raises(ExtractionError, match="nothing would be left to read and decode"):
        _actor_resources(ray, options, 2, 1)
    with pytest.raises(ExtractionError, match="no GPU"):
        _actor_resources(ray, ExtractOptions(model="m", output=Path("x"), device="cuda"), None, 1)
