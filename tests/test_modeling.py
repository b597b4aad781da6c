"""ButdFrcnnModel as a Transformers model: outputs, batching without drift, determinism, selection modes,
safetensors round trips, Auto classes installed and as remote code, the full-size default architecture."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import golden_image_path, tiny_config
from images import make_odd_images
from remote import run_without_package
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor, ButdFrcnnModel, ButdFrcnnModelOutput
from butd_frcnn.conversion.convert import EXPECTED_FILES
from butd_frcnn.remote_code import model_files

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

OUTPUT_FIELDS = [
    "region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores", "num_boxes",
    "proposals", "num_proposals", "proposal_scores", "proposal_features", "class_probs", "attribute_probs",
    "box_deltas",
]  # fmt: skip


def random_images(sizes, seed=0):
    generator = np.random.default_rng(seed)
    return [(generator.random((h, w, 3)) * 255).astype(np.uint8) for h, w in sizes]


@pytest.fixture(scope="module")
def tiny_random_model():
    torch.manual_seed(0)
    return ButdFrcnnModel(tiny_config()).eval()


def per_image(outputs: ButdFrcnnModelOutput, index: int) -> dict[str, torch.Tensor]:
    """One image's real entries of every padded field."""
    boxes, proposals = int(outputs.num_boxes[index]), int(outputs.num_proposals[index])
    result = {}
    for field in OUTPUT_FIELDS:
        value = getattr(outputs, field)[index]
        if field in ("num_boxes", "num_proposals"):
            result[field] = value
        elif field in ("region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores"):
            result[field] = value[:boxes]
        else:
            result[field] = value[:proposals]
    return result


def assert_identical(a: dict, b: dict, context: str):
    for field in OUTPUT_FIELDS:
        assert torch.equal(a[field], b[field]), f"{context}: {field} differs"


def test_output_fields_shapes_and_padding(tiny_random_model, processor):
    config = tiny_random_model.config
    batch = processor(random_images([(40, 60), (70, 30)]), return_tensors="pt")
    outputs = tiny_random_model(**batch)
    assert next(iter(outputs.keys())) == "region_features"
    b, n = outputs.boxes.shape[:2]
    p = outputs.proposals.shape[1]
    assert b == 2 and outputs.region_features.shape == (2, n, config.hidden_sizes[-1])
    assert outputs.object_ids.shape == outputs.attribute_ids.shape == outputs.object_scores.shape == (2, n)
    assert outputs.class_probs.shape == (2, p, config.num_labels) == (2, p, 1601)
    assert outputs.attribute_probs.shape == (2, p, config.num_attributes) == (2, p, 401)
    assert outputs.box_deltas.shape == (2, p, 4 * 1601)
    assert outputs.proposal_features.shape == (2, p, config.hidden_sizes[-1])
    assert (outputs.num_proposals <= config.rpn_post_nms_top_n).all()
    for i in range(2):
        count = int(outputs.num_boxes[i])
        assert min(10, int(outputs.num_proposals[i])) <= count <= 100
        assert (outputs.object_ids[i, count:] == -1).all() and (outputs.attribute_ids[i, count:] == -1).all()
        assert (outputs.region_features[i, count:] == 0).all()
        ids = outputs.object_ids[i, :count]
        assert ((ids >= 1) & (ids <= 1600)).all()
        assert ((outputs.attribute_ids[i, :count] >= 1) & (outputs.attribute_ids[i, :count] <= 400)).all()
        torch.testing.assert_close(
            outputs.class_probs[i, : outputs.num_proposals[i]].sum(1), torch.ones(outputs.num_proposals[i])
        )
    as_tuple = tiny_random_model(**batch, return_dict=False)
    assert torch.equal(as_tuple[0], outputs.region_features)


def test_cell_anchors_are_a_persistent_buffer(tiny_random_model):
    anchors = tiny_random_model.proposal_generator.anchor_generator.cell_anchors
    assert anchors.shape == (12, 4)
    assert "proposal_generator.anchor_generator.cell_anchors" in tiny_random_model.state_dict()
    heads = tiny_random_model.proposal_generator.rpn_head
    assert heads.objectness_logits.out_channels == 24 and heads.anchor_deltas.out_channels == 48
    assert tiny_random_model.roi_heads.box_predictor.bbox_pred.out_features == 1601 * 4


def test_batch_of_different_sizes_equals_one_by_one(tiny_golden_model, processor):
    """Padding never reaches the network: each image's results are bit-identical alone and in any batch."""
    names = ["astronaut", "noise_333x500", "gradient_500x375", "rocket", "filled_with_0"]
    paths = [golden_image_path(name) for name in names]
    batched = tiny_golden_model(**processor(paths, return_tensors="pt"))
    for index, path in enumerate(paths):
        alone = tiny_golden_model(**processor(path, return_tensors="pt"))
        assert_identical(per_image(batched, index), per_image(alone, 0), names[index])
    reordered = tiny_golden_model(**processor(paths[::-1], return_tensors="pt"))
    for index in range(len(paths)):
        assert_identical(per_image(reordered, len(paths) - 1 - index), per_image(batched, index), "reordered batch")


def test_two_runs_are_identical(tiny_golden_model, processor):
    batch = processor([golden_image_path("camera"), golden_image_path("filled_with_255")], return_tensors="pt")
    first, second = tiny_golden_model(**batch), tiny_golden_model(**batch)
    for index in range(2):
        assert_identical(per_image(first, index), per_image(second, index), "second run")


def test_selection_modes_per_call(tiny_golden_model, processor):
    batch = processor(golden_image_path("astronaut"), return_tensors="pt")
    default = tiny_golden_model(**batch)
    assert int(default.num_boxes[0]) == 50  # the 10-100 / 0.2 default of the config (the original selects 50)
    fixed = tiny_golden_model(**batch, min_boxes=36, max_boxes=36)
    assert int(fixed.num_boxes[0]) == 36
    strict = tiny_golden_model(**batch, score_threshold=1.01)
    assert int(strict.num_boxes[0]) == 10  # nothing reaches the threshold: the 10 best
    everything = tiny_golden_model(**batch, min_boxes=1, max_boxes=1000, score_threshold=0.0)
    assert int(everything.num_boxes[0]) == int(everything.num_proposals[0])
    with pytest.raises(ValueError, match="min_boxes"):
        tiny_golden_model(**batch, min_boxes=50, max_boxes=10)


def test_exact_and_device_tie_orders_agree_without_ties(tiny_golden_model, processor):
    batch = processor(golden_image_path("noise_333x500"), return_tensors="pt")
    exact = tiny_golden_model(**batch)
    config = ButdFrcnnConfig(**{**tiny_golden_model.config.to_dict(), "exact_tie_order": False})
    device_sorted = ButdFrcnnModel(config).eval()
    device_sorted.load_state_dict(tiny_golden_model.state_dict())
    assert_identical(per_image(device_sorted(**batch), 0), per_image(exact, 0), "device tie order")


def test_inputs_are_checked(tiny_random_model, processor):
    batch = processor(random_images([(40, 60)]), return_tensors="pt")
    with pytest.raises(ValueError, match="scales"):
        tiny_random_model(batch["pixel_values"], batch["image_sizes"], batch["scales"].to(torch.bfloat16))
    with pytest.raises(TypeError, match="unexpected"):
        tiny_random_model(**batch, labels=None)


def test_every_odd_image_kind_runs(tiny_golden_model, processor, tmp_path):
    files = make_odd_images(tmp_path)
    outputs = tiny_golden_model(**processor(list(files.values()), return_tensors="pt"))
    assert (outputs.num_boxes >= 10).all() and outputs.region_features.shape[0] == len(files)
    single = processor(str(tmp_path / "rgb.png"), return_tensors="pt")
    one_by_one = tiny_golden_model(**single)
    index = list(files).index("rgb.png")
    assert_identical(per_image(outputs, index), per_image(one_by_one, 0), "rgb.png")


def save_hub_folder(model, folder):
    """What the converter writes but the card: config.json with auto_map, model.safetensors,
    preprocessor_config.json, sources, endpoint files and pipeline."""
    model.save_pretrained(folder)
    ButdFrcnnImageProcessor().save_pretrained(folder)


def test_save_and_load_round_trip_bit_exactly_in_safetensors(tiny_golden_model, processor, tmp_path):
    save_hub_folder(tiny_golden_model, tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(weights, framework="pt") as handle:
        assert handle.metadata().get("format") == "pt"
        stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    expected = tiny_golden_model.state_dict()
    assert set(stored) == set(expected)
    for key, value in expected.items():
        assert torch.equal(stored[key], value), key
    loaded = ButdFrcnnModel.from_pretrained(tmp_path).eval()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    batch = processor(golden_image_path("rocket"), return_tensors="pt")
    assert_identical(per_image(loaded(**batch), 0), per_image(tiny_golden_model(**batch), 0), "reloaded")


def test_auto_classes_resolve_the_installed_package(tiny_golden_model, tmp_path):
    save_hub_folder(tiny_golden_model, tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ButdFrcnnConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), ButdFrcnnModel)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), ButdFrcnnImageProcessor)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "butd_frcnn" and config["auto_map"]["AutoModel"].startswith("modeling_butd_frcnn")


def test_remote_code_without_the_package(tiny_golden_model, processor, tmp_path):
    folder = tmp_path / "hub"
    save_hub_folder(tiny_golden_model, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(name for name in EXPECTED_FILES if name != "README.md")
    image = golden_image_path("astronaut")
    run_without_package(
        f"""
        import numpy as np, torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.inference_mode():
            outputs = model(**processor({str(image)!r}, return_tensors="pt"), min_boxes=36, max_boxes=36)
        np.savez("remote.npz", **{{k: v.numpy() for k, v in outputs.items() if k != "hidden_states"}})
        """,
        cwd=tmp_path,
    )
    remote = np.load(tmp_path / "remote.npz")
    local = tiny_golden_model(**processor(image, return_tensors="pt"), min_boxes=36, max_boxes=36)
    for field in OUTPUT_FIELDS:
        assert np.array_equal(remote[field], getattr(local, field).numpy()), field


def test_model_files_are_what_transformers_finds_from_the_model():
    """`model_files()` (what converted and saved folders must hold) are exactly the files transformers' remote code
    needs: the model and the image processor files and every file they import relatively, found as
    `save_pretrained` finds them (`get_relative_import_files`), so that a new model-side file cannot be left out."""
    package = Path(inspect.getfile(ButdFrcnnModel)).parent
    needed = set()
    for entry in ("modeling_butd_frcnn.py", "image_processing_butd_frcnn.py"):
        needed |= {entry, *(Path(name).name for name in get_relative_import_files(package / entry))}
    assert "kernels_butd_frcnn.py" in needed and "precision_butd_frcnn.py" in needed
    assert sorted(model_files()) == sorted(needed)


def test_model_files_import_each_other_without_a_cycle():
    """transformers 4's `get_relative_import_files` follows relative imports until no new file turns up, and loops
    forever on a cycle (typing-only imports included: it reads the source), so `save_pretrained` and remote-code
    loading hang at the floor of the supported range. The model files' relative imports form a DAG."""
    package = Path(inspect.getfile(ButdFrcnnModel)).parent
    imports = {path.stem: set(get_relative_imports(str(path))) for path in package.glob("*_butd_frcnn.py")}
    finished: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"relative imports form a cycle: {' -> '.join((*path, module))}"
        if module not in finished:
            for imported in imports.get(module, ()):
                visit(imported, (*path, module))
            finished.add(module)

    for module in imports:
        visit(module, ())


def test_full_size_default_architecture_runs(full_random_model, processor):
    """ResNet-101 with the released heads (random weights): a 600x800 input gives 10-100 regions of 2048-d."""
    config = ButdFrcnnConfig()
    assert config.depths == [3, 4, 23, 3] and config.num_labels == 1601 and config.num_attributes == 401
    model = full_random_model
    assert sum(p.numel() for p in model.parameters()) > 60_000_000
    batch = processor(random_images([(600, 800)], seed=1), return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 600, 800)
    with torch.inference_mode():
        outputs = model(**batch)
    count = int(outputs.num_boxes[0])
    assert 10 <= count <= 100
    assert outputs.region_features.shape == (1, count, 2048) and torch.isfinite(outputs.region_features).all()
