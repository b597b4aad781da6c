"""benchmarks/gpu_check.py, the prepared CUDA check, run the way CI can: `--quick` on the CPU with TINY sizes, in this
process. Its JSON must hold every section with sound values, so that the check does not rot between device runs."""

import importlib.util
import json

import pytest
from golden import REPO_ROOT

GOLDEN_CHECKS = {"res4", "rpn_probabilities", "rpn_deltas", "proposals end to end", "pool5_flat", "cls_prob",
                 "attr_prob", "selection 10-100", "selection 36"}  # fmt: skip


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, shared_dir):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    output = tmp_path_factory.mktemp("gpu-check")
    returned = gpu_check.main([str(output), "--quick"])
    written = json.loads((output / "gpu_check.json").read_text())
    assert written == json.loads(json.dumps(returned)), "the JSON holds what the run measured"
    return written


def test_the_environment_is_recorded(quick_report):
    environment = quick_report["environment"]
    assert environment["quick"] is True and environment["device"] == "cpu"
    assert environment["torch"] and environment["transformers"] and environment["threads"] >= 1
    assert set(quick_report["seconds"]) == {"parity_tiny", "throughput", "agreement", "total"}


def test_parity_against_the_original_and_the_cpu_run(quick_report):
    parity = quick_report["parity_tiny"]
    assert list(parity["images"]) == ["astronaut"]
    checks = parity["images"]["astronaut"]["versus_original"]
    assert {check["check"] for check in checks} == GOLDEN_CHECKS
    assert all(check["passed"] for check in checks) and parity["all_within_tolerances"] is True
    for check in checks:  # measured within the tests' tolerances
        if isinstance(check["measured"], float):
            assert 0 <= check["measured"] <= check["tolerance"], check
    selection = next(check for check in checks if check["check"] == "selection 36")
    assert selection["measured"]["regions"] == 36 and selection["measured"]["worst_cosine"] >= 0.99999
    # the checked device is the CPU here: every stage must come out bit for bit as in the CPU reference run
    stages = parity["images"]["astronaut"]["versus_cpu_fp32"]
    assert {"backbone.3", "rpn_probabilities", "proposals", "proposal_features", "class_probs",
            "selected.boxes", "selected.region_features (36)"} <= set(stages)  # fmt: skip
    assert all(stage["bit_exact"] and stage["max_abs_diff"] == 0 for stage in stages.values())
    assert sorted(parity["bit_exact_stages"]) == sorted(stages) and parity["differing_stages"] == {}


def test_throughput_per_precision_and_batch(quick_report):
    speed = quick_report["throughput"]
    assert speed["size"] == [96, 128] and speed["model"] == "tiny" and speed["proposals"] == 30
    assert speed["tf32"] == {"skipped": "tf32 runs on CUDA only"}
    for mode in ("fp32", "bf16", "fp32-screened"):
        assert sorted(speed[mode]) == ["1", "2"], mode
        for entry in speed[mode].values():
            assert entry["images_per_second"] > 0 and entry["seconds_per_batch"] > 0
            assert entry["peak_memory_bytes"] is None  # no GPU memory on the CPU
    for batch in ("1", "2"):
        screened = speed["fp32-screened"][batch]
        assert screened["regions_equal_fp32"] is True, "fp32-screened gives fp32's regions bit for bit"
        assert 0 < screened["settled_share"] <= 1
        assert "settled_share" not in speed["fp32"][batch] and "regions_equal_fp32" in speed["bf16"][batch]


def test_agreement_lines(quick_report):
    lines = quick_report["agreement"]
    assert lines[0].startswith("TINY network, 1 images, device cpu")
    assert sum(line.startswith("fp32 ") for line in lines) == 2 and sum(line.startswith("bf16") for line in lines) == 2
    assert all("vs fp32:" in line for line in lines if line.startswith("bf16"))
