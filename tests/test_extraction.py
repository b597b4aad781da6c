"""End-to-end tests of `butd-frcnn extract` and `butd-frcnn merge`: real subprocesses, a small converted model (the
golden TINY weights), a folder of ~50 generated images with every kind of bad one, each format read back with a
plain reader (what downstream code does) and compared with the model's own outputs."""

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from extraction_helpers import (
    PLAIN_READERS,
    TEST_MAX_PIXELS,
    assert_rows_equal,
    direct_outputs,
    make_image_folder,
    plain_read_butd_tsv,
    plain_read_hdf5,
    plain_read_lxmert_tsv,
    run_cli,
    run_cli_process,
    run_torchrun,
    save_test_model,
    start_cli_process,
)
from golden import GOLDEN

from butd_frcnn.extraction import ExtractionError, merge_outputs, read_features
from butd_frcnn.extraction.model_loading import load_model
from butd_frcnn.extraction.sharding import Shard

# the fields each format carries, as the plain readers name them
FORMAT_KEYS = {
    "butd-tsv": ("image_h", "image_w", "boxes", "features"),
    "lxmert-tsv": ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf"),
    "hdf5": ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf"),
    "npz": ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf"),
}
OUTPUT_NAMES = {"butd-tsv": "features.tsv", "lxmert-tsv": "features.tsv", "hdf5": "features.h5", "npz": "features"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir) -> Path:
    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(folder, {id: path} of the images that must come out, {id: reason words} of those that must be skipped)."""
    root = tmp_path_factory.mktemp("images")
    good, bad = make_image_folder(root)
    return root, good, bad


@pytest.fixture(scope="module")
def reference(model_folder, images) -> dict[str, dict]:
    return direct_outputs(model_folder, images[1])


WORKERS = {"butd-tsv": "1", "lxmert-tsv": "0", "hdf5": "2", "npz": "1"}  # in-process decoding and 1-2 workers


@pytest.fixture(scope="module")
def extracted(model_folder, images, tmp_path_factory):
    """`extracted(format)`: the CLI run over the whole image folder into that format (run once per module)."""
    runs = {}

    def run(format: str) -> tuple[Path, subprocess.CompletedProcess]:
        if format not in runs:
            output = tmp_path_factory.mktemp(format) / OUTPUT_NAMES[format]
            args = extract_args(model_folder, output, "--format", format, "--num-workers", WORKERS[format])
            runs[format] = output, run_cli(*args, images[0])
        return runs[format]

    return run


def extract_in_process(model_folder: Path, output: Path, inputs: list, **options):
    """The library entry point, for setting up outputs that a CLI run then works on (saves a process start)."""
    from butd_frcnn.extraction import ExtractOptions, extract

    defaults = {"num_workers": 0, "max_pixels": TEST_MAX_PIXELS, "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs get: same thread count, same bits
    try:
        return extract(ExtractOptions(inputs=[str(i) for i in inputs], model=str(model_folder), output=output,
                                      **{**defaults, **options}))  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def expected_rows(reference: dict, format: str, ids=None) -> dict[str, dict]:
    keys = FORMAT_KEYS[format]
    return {i: {k: v for k, v in row.items() if k in keys} for i, row in reference.items() if ids is None or i in ids}


def extract_args(model_folder, output, *extra):
    return [
        "extract",
        "--model",
        model_folder,
        "--output",
        output,
        "--max-pixels",
        TEST_MAX_PIXELS,
        "--no-progress",
        *extra,
    ]


def read_errors_file(path: Path) -> dict[str, str]:
    return {line.split("\t")[0]: line for line in path.read_text().splitlines()}


def assert_plain_rows(format: str, output: Path, reference: dict, exact: bool = True) -> dict:
    rows = PLAIN_READERS[format](output)
    expected = expected_rows(reference, format)
    if format == "npz":  # npz files also carry num_boxes
        expected = {i: {**row, "num_boxes": None} for i, row in expected.items()}
    assert_rows_equal(rows, expected, exact)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Every format, every kind of image
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["butd-tsv", "lxmert-tsv", "hdf5", "npz"])
def test_every_format_holds_the_models_outputs_and_lists_every_bad_image(format, extracted, images, reference):
    _, good, bad = images
    output, completed = extracted(format)

    assert_plain_rows(format, output, reference)
    ours = {record.image_id: record for record in read_features(output)}
    assert sorted(ours) == sorted(good)
    for image_id, record in ours.items():
        assert np.array_equal(record.features, reference[image_id]["features"])
        assert np.array_equal(record.boxes, reference[image_id]["boxes"])

    errors = read_errors_file(Path(f"{output}.errors.tsv"))
    assert sorted(errors) == sorted(bad)
    for image_id, words in bad.items():
        _, path, reason = errors[image_id].split("\t")
        assert path.endswith(image_id + Path(path).suffix) and words in reason, errors[image_id]
        assert path in reason, "the reason names the file"
    summary = completed.stdout
    assert f"{len(good)} images extracted" in summary and f"failed {len(bad)}" in summary
    assert "images/s" in summary and "decoding" in summary and "model" in summary and "writing" in summary


def test_batches_of_one_size_give_what_one_image_at_a_time_gives(model_folder, images, reference, tmp_path):
    """Same-size images share a batch (on a CPU by default, 4 at a time), and each image's values are bit for bit
    those it gets alone (see batching.py), also with the test model's small images."""
    folder = images[0]
    output = tmp_path / "batched.tsv"
    run_cli(*extract_args(model_folder, output, "--format", "lxmert-tsv", "--batch-size", "3", "--num-workers", "1"),
            folder)  # fmt: skip
    rows = plain_read_lxmert_tsv(output)
    assert_rows_equal(rows, expected_rows(reference, "lxmert-tsv"), exact=True)


# ---------------------------------------------------------------------------------------------------------------
# Interruptions: SIGKILL, Ctrl-C, a half-written record, a full disk
# ---------------------------------------------------------------------------------------------------------------


def _records_on_disk(format: str, output: Path) -> int:
    """Images written so far (complete rows / files; for hdf5 the spooled ones)."""
    if format == "npz":
        return len(list(output.glob("*.npz"))) if output.exists() else 0
    target = output.with_name(output.name + ".spool") if format == "hdf5" else output
    return target.read_bytes().count(b"\n") if target.exists() else 0


def _start_and_interrupt(args: list, format: str, output: Path, signum: int, after: int) -> subprocess.Popen:
    process = start_cli_process(*args)  # a process: the point is a signal
    deadline = time.monotonic() + 300
    while _records_on_disk(format, output) < after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted: " + process.communicate()[1]
    process.send_signal(signum)
    process.communicate(timeout=300)
    return process


@pytest.mark.parametrize("format", ["butd-tsv", "hdf5", "npz"])
def test_sigkill_then_resume_gives_every_image_once_with_the_same_values(
    format, model_folder, images, reference, tmp_path
):
    folder, good, _ = images
    output = tmp_path / OUTPUT_NAMES[format]
    args = extract_args(model_folder, output, "--format", format, "--num-workers", "1", "--hdf5-checkpoint", "4")
    killed = _start_and_interrupt([*args, folder], format, output, signal.SIGKILL, after=8)
    assert killed.returncode == -signal.SIGKILL

    # what the killed run left is readable as it stands
    if format == "butd-tsv":
        partial = plain_read_butd_tsv(output)
    elif format == "hdf5":  # the last checkpoint, plus the spool (whole rows) beside it
        partial = {**plain_read_hdf5(output), **plain_read_lxmert_tsv(output.with_name(output.name + ".spool"))}
    else:
        partial = PLAIN_READERS[format](output)
    assert 8 <= len(partial) < len(good)
    assert_rows_equal(partial, expected_rows(reference, format, partial))

    resumed = run_cli(*args, "--resume", folder)
    assert f"already done {len(partial)}" in resumed.stdout
    assert_plain_rows(format, output, reference)
    assert not output.with_name(output.name + ".spool").exists()


def test_ctrl_c_stops_after_the_batch_and_resume_finishes(model_folder, images, reference, tmp_path):
    folder, good, _ = images
    output = tmp_path / "features.tsv"
    args = extract_args(model_folder, output, "--format", "lxmert-tsv", "--num-workers", "1")
    interrupted = _start_and_interrupt([*args, folder], "lxmert-tsv", output, signal.SIGINT, after=5)
    assert interrupted.returncode == 130
    partial = plain_read_lxmert_tsv(output)
    assert 5 <= len(partial) < len(good)
    run_cli(*args, "--resume", folder)
    assert_plain_rows("lxmert-tsv", output, reference)


def test_half_written_last_records_are_repaired_on_resume(model_folder, images, reference, tmp_path):
    """What a power cut can leave: a TSV row or spool row cut short, an npz that never got renamed, one that did
    before its data reached the disk."""
    good = images[1]
    some = dict(list(good.items())[:6])
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{image_id}\t{path}\n" for image_id, path in some.items()))
    outputs = {format: tmp_path / OUTPUT_NAMES[format] for format in ("lxmert-tsv", "hdf5", "npz")}
    for format, output in outputs.items():
        extract_in_process(model_folder, output, [listing], format=format)

    tsv = outputs["lxmert-tsv"]
    lines = tsv.read_bytes().splitlines(keepends=True)
    tsv.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    spool = outputs["hdf5"].with_name("features.h5.spool")
    spool.write_bytes(lines[0] + lines[1][:100])  # one image the file already holds, and a cut-off one
    npz = outputs["npz"]
    victim = min(npz.glob("*.npz"))
    victim.write_bytes(victim.read_bytes()[:500])
    (npz / f".{victim.name}.tmp-123").write_bytes(b"half")
    repair_messages = {
        "lxmert-tsv": "cutting off a broken row",
        "hdf5": "cutting off a broken row",
        "npz": "incomplete file removed",
    }

    for format, output in outputs.items():
        resumed = run_cli(
            *extract_args(model_folder, output, "--format", format, "--num-workers", "0", "--resume"), listing
        )
        assert repair_messages[format] in resumed.stderr
        expected = expected_rows(reference, format, some)
        if format == "npz":
            expected = {i: {**row, "num_boxes": None} for i, row in expected.items()}
        assert_rows_equal(PLAIN_READERS[format](output), expected)
    assert not list(npz.glob(".*.tmp-*"))


def test_a_full_disk_stops_with_a_clear_error_and_loses_nothing(model_folder, images, reference, tmp_path):
    folder, good, _ = images
    output = tmp_path / "features.tsv"
    args = extract_args(model_folder, output, "--format", "butd-tsv", "--num-workers", "0")
    limit = 40_000  # bytes: room for a few rows; beyond it writes fail as on a full disk

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    completed = run_cli_process(*args, folder, check=False, preexec_fn=limit_file_size)  # a limit on a process
    assert completed.returncode == 1
    assert "file-size limit" in completed.stderr and "--resume" in completed.stderr
    assert output.stat().st_size <= limit
    partial = plain_read_butd_tsv(output)  # whole rows only
    assert 0 < len(partial) < len(good)
    assert_rows_equal(partial, expected_rows(reference, "butd-tsv", partial))

    run_cli(*args, "--resume", folder)
    assert_plain_rows("butd-tsv", output, reference)


# ---------------------------------------------------------------------------------------------------------------
# Scale-out: --shard by hand, torchrun
# ---------------------------------------------------------------------------------------------------------------


def test_shards_by_hand_merge_into_one_output_checked_for_missing_and_duplicates(
    model_folder, images, reference, tmp_path
):
    folder, good, bad = images
    output = tmp_path / "features.h5"
    run_cli(*extract_args(model_folder, output, "--shard", "0/3", "--num-workers", "0"), folder)
    for index in (1, 2):
        extract_in_process(model_folder, output, [folder], shard=Shard(index, 3))
    shards = sorted(tmp_path.glob("features.shard-*-of-00003.h5"))
    assert len(shards) == 3

    with pytest.raises(ExtractionError, match=r"shards \[1\] are missing"):
        merge_outputs([shards[0], shards[2]], output)
    with pytest.raises(ExtractionError, match="more than one shard"):
        merge_outputs([shards[0], shards[0], shards[1]], output)
    assert not output.exists()

    merged = run_cli("merge", "--output", output)  # finds the shards beside the output
    assert f"{len(good)} images" in merged.stdout and f"{len(bad)} images had failed" in merged.stdout
    assert_plain_rows("hdf5", output, reference)
    assert sorted(read_errors_file(Path(f"{output}.errors.tsv"))) == sorted(bad)


def test_torchrun_with_two_cpu_processes_equals_one_process(model_folder, images, reference, extracted, tmp_path):
    folder, _, bad = images
    single, _ = extracted("lxmert-tsv")
    merged = tmp_path / "torchrun" / "features.tsv"
    completed = run_torchrun(
        *extract_args(model_folder, merged, "--format", "lxmert-tsv", "--num-workers", "1"), folder
    )
    assert completed.returncode == 0, completed.stderr
    assert "Merged 2 shards" in completed.stdout
    assert len(list(merged.parent.glob("features.shard-*-of-00002.tsv"))) == 2
    one, two = plain_read_lxmert_tsv(single), plain_read_lxmert_tsv(merged)
    assert_rows_equal(two, one)
    assert_rows_equal(two, expected_rows(reference, "lxmert-tsv"))
    assert sorted(read_errors_file(Path(f"{merged}.errors.tsv"))) == sorted(bad)


# ---------------------------------------------------------------------------------------------------------------
# Listing and usage errors: before any work starts
# ---------------------------------------------------------------------------------------------------------------


def test_duplicate_ids_are_an_error_before_any_work(model_folder, tmp_path):
    from PIL import Image

    for relative in ("a/picture.png", "b/picture.jpg", "b/other.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / relative)
    output = tmp_path / "out.tsv"
    completed = run_cli(*extract_args(model_folder, output), tmp_path / "a", tmp_path / "b", check=False)
    assert completed.returncode == 1
    assert (
        "'picture'" in completed.stderr and "a/picture.png" in completed.stderr and "b/picture.jpg" in completed.stderr
    )
    assert not output.exists() and not Path(f"{output}.manifest.json").exists()


def test_list_files_give_ids_and_paths(model_folder, images, reference, tmp_path):
    good = images[1]
    chosen = list(good.items())[:3]
    listing = tmp_path / "lists" / "images.lst"
    listing.parent.mkdir()
    lines = [
        "# a comment, then an empty line",
        "",
        f"img-one\t{chosen[0][1]}",
        os.path.relpath(chosen[1][1], listing.parent),  # relative to the list's folder; id from the name
        f"1234\t{chosen[2][1]}",
    ]
    listing.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.tsv"
    run_cli(*extract_args(model_folder, output, "--num-workers", "0"), listing)
    rows = plain_read_butd_tsv(output)
    assert sorted(rows) == sorted(["img-one", chosen[1][0], "1234"])
    assert np.array_equal(rows["1234"]["features"], reference[chosen[2][0]]["features"])


def test_existing_outputs_are_kept_unless_resumed_with_the_same_settings_or_overwritten(
    model_folder, images, tmp_path
):
    good = images[1]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(path) for path in list(good.values())[:2]) + "\n")
    output = tmp_path / "out.tsv"
    extract_in_process(model_folder, output, [listing])
    with pytest.raises(ExtractionError, match="--resume .* or --overwrite"):
        extract_in_process(model_folder, output, [listing])
    with pytest.raises(ExtractionError, match="'min_boxes': 36"):
        extract_in_process(model_folder, output, [listing], min_boxes=36, max_boxes=36, resume=True)
    redo = run_cli(*extract_args(model_folder, output, "--boxes", "36", "--overwrite", "--num-workers", "0"), listing)
    assert "2 images extracted" in redo.stdout
    assert all(row["boxes"].shape[0] <= 36 for row in plain_read_butd_tsv(output).values())


def test_every_precision_from_the_command_line(model_folder, images, reference, tmp_path):
    """`extract --dtype` runs every precision through the real CLI: fp32 (spelt `float32` here) and fp32-screened
    write fp32's values bit for bit; bf16 (spelt `bfloat16`) and fp16 compute in half precision, close to fp32; a run
    resumes under either spelling; `tf32` on a CPU is refused before any work."""
    good = images[1]
    chosen = sorted(good)[:3]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{image_id}\t{good[image_id]}\n" for image_id in chosen))
    for dtype in ("float32", "fp32-screened"):
        output = tmp_path / f"{dtype}.tsv"
        run_cli(*extract_args(model_folder, output, "--format", "lxmert-tsv", "--dtype", dtype), listing)
        assert_rows_equal(plain_read_lxmert_tsv(output), expected_rows(reference, "lxmert-tsv", chosen), exact=True)

    for dtype, precision in (("bfloat16", "bf16"), ("fp16", "fp16")):
        output = tmp_path / f"{precision}.tsv"
        run_cli(*extract_args(model_folder, output, "--dtype", dtype), listing)
        assert json.loads(Path(f"{output}.manifest.json").read_text())["dtype"] == precision
        rows = plain_read_butd_tsv(output)
        assert sorted(rows) == chosen
        for image_id in chosen:
            ours, theirs = rows[image_id]["features"], reference[image_id]["features"]
            cosine = (ours * theirs).sum() / (np.linalg.norm(ours) * np.linalg.norm(theirs))
            assert cosine > 0.99, (precision, image_id)
        assert not all(np.array_equal(rows[i]["features"], reference[i]["features"]) for i in chosen), precision
    resumed = extract_in_process(model_folder, tmp_path / "bf16.tsv", [listing], dtype="bf16", resume=True)
    assert resumed.already_done == 3 and resumed.extracted == 0

    refused = run_cli(*extract_args(model_folder, tmp_path / "tf32.tsv", "--dtype", "tf32"), listing, check=False)
    assert refused.returncode == 1 and "CUDA" in refused.stderr
    assert not (tmp_path / "tf32.tsv").exists()


def test_a_model_that_cannot_be_had_is_a_clear_error(model_folder, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(image)
    hub = run_cli("extract", "--model", "someone/butd-frcnn", "-o", tmp_path / "o.tsv", image, check=False)
    assert hub.returncode == 1
    assert "HF_HUB_OFFLINE" in hub.stderr and "butd-frcnn convert" in hub.stderr
    with pytest.raises(ExtractionError, match="no such folder"):
        load_model(str(tmp_path / "nothing"), torch.device("cpu"), "float32")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text((model_folder / "config.json").read_text())
    with pytest.raises(ExtractionError, match="lacks model.safetensors"):
        load_model(str(empty), torch.device("cpu"), "float32")
    with pytest.raises(ExtractionError, match="butd-frcnn convert"):
        load_model(str(GOLDEN / "tiny_seed0.caffemodel"), torch.device("cpu"), "float32")


# ---------------------------------------------------------------------------------------------------------------
# Small parts
# ---------------------------------------------------------------------------------------------------------------


def test_shard_and_boxes_arguments():
    from butd_frcnn.extraction.cli import parse_boxes
    from butd_frcnn.extraction.records import ExtractionError
    from butd_frcnn.extraction.sharding import Shard

    assert parse_boxes("36") == (36, 36) and parse_boxes("10-100") == (10, 100)
    assert Shard.parse("1/4").select(list(range(10))) == [1, 5, 9]
    assert Shard.parse("1/4").output_path(Path("f.tsv")) == Path("f.shard-00001-of-00004.tsv")
    for text in ("4/4", "1-4", "x/2"):
        with pytest.raises(ExtractionError):
            Shard.parse(text)


def test_image_ids_from_numbers_in_file_names(tmp_path):
    from butd_frcnn.extraction.inputs import image_id_from_path

    assert image_id_from_path("/coco/COCO_val2014_000000000042.jpg", "number") == "42"
    assert image_id_from_path("/vg/2345.jpg", "stem") == "2345"


def test_the_batcher_groups_by_size_and_bounds_what_waits():
    import torch

    from butd_frcnn.extraction.batching import SizeBatcher
    from butd_frcnn.extraction.decoding import PreparedImage
    from butd_frcnn.extraction.inputs import ImageEntry

    def image(name, height, width):
        return PreparedImage(ImageEntry(name, name), torch.zeros(3, height, width), 1.0, (height, width), 0.0)

    batcher = SizeBatcher(batch_size=2, max_pending=3)
    assert batcher.add(image("a", 10, 20)) == []
    assert batcher.add(image("b", 20, 10)) == []
    assert [[i.entry.image_id for i in batch] for batch in batcher.add(image("c", 10, 20))] == [["a", "c"]]
    batcher.add(image("d", 30, 30))
    batcher.add(image("e", 40, 40))
    flushed = batcher.add(image("f", 50, 50))  # four waiting, one over the bound: the oldest largest bucket goes
    assert [[i.entry.image_id for i in batch] for batch in flushed] == [["b"]]
    assert sorted(i.entry.image_id for batch in batcher.drain() for i in batch) == ["d", "e", "f"]
