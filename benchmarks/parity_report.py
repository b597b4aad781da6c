"""Print how closely this implementation reproduces the original Caffe outputs in ../shared/golden, stage by stage.

    python benchmarks/parity_report.py            # TINY network, 7 images
    python benchmarks/parity_report.py --full     # also FULL ResNet-101 (regenerates its 262 MB weights, ~1 min)

Stages: input blob, res4, RPN maps, proposals (given the original's RPN maps / end to end), region features and
probabilities, selection scores (given the original's inputs), and the final selections in both modes.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, installed or not
GOLDEN = REPO.parent / "shared" / "golden"
IMAGES = {
    "filled_with_0": "filled_with_0.png",
    "filled_with_255": "filled_with_255.png",
    "gradient_500x375": "gradient_500x375.png",
    "noise_333x500": "noise_333x500.png",
    "camera": "camera.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
}
MODES = {"_10_100": (10, 100), "_36": (36, 36)}


def load_model(caffemodel: Path):
    from butd_frcnn import ButdFrcnnModel
    from butd_frcnn.conversion.caffemodel import read_caffemodel
    from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe

    net = read_caffemodel(caffemodel)
    config = config_from_caffe(net)
    model = ButdFrcnnModel(config).eval()
    model.load_state_dict(caffe_to_state_dict(net, config)[0])
    return model


def box_agreement(ours: np.ndarray, theirs: np.ndarray, atol: float = 5e-4) -> str:
    """'same order', or how many of the original's boxes we also have."""
    if ours.shape == theirs.shape and np.abs(ours - theirs).max(initial=0) <= atol:
        return "same order"
    common = sum(bool((np.abs(ours - box).max(axis=1) <= atol).any()) for box in theirs) if len(ours) else 0
    return f"{common}/{len(theirs)} common"


def max_cosine_matching(ours: np.ndarray, theirs: np.ndarray) -> float:
    """For each original feature, the best cosine among ours; the worst of those."""
    a = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    b = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    return float((a @ b.T).max(axis=1).min())


def report(variant: str, model, names: list[str]):
    from butd_frcnn import ButdFrcnnImageProcessor
    from butd_frcnn.ops_butd_frcnn import objectness_probabilities, per_class_nms_max_scores

    processor = ButdFrcnnImageProcessor()
    generator = model.proposal_generator
    print(f"\n{variant.upper()}")
    header = "image              | data     | res4     | rpn prob | props(orig maps) | props e2e  | pool5    | cls_prob | max_conf(orig) | 10-100           | 36"
    print(header)
    for name in names:
        golden = dict(np.load(GOLDEN / variant / f"{name}.npz"))
        source = golden.get("image_bgr")
        batch = (
            processor(source, input_channel_order="bgr", return_tensors="pt")
            if source is not None
            else processor(str(GOLDEN / "images" / IMAGES[name]), return_tensors="pt")
        )
        with torch.no_grad():
            outputs = model(**batch, output_hidden_states=True)
            res4 = outputs.hidden_states[-1]
            logits, _ = generator.rpn_head(res4)
        data_blob = golden.get("blob/data")
        data = f"{np.abs(batch['pixel_values'].numpy() - data_blob).max():.1e}" if data_blob is not None else "-"
        res4_key = "blob/res4a" if "blob/res4a" in golden else "blob/res4b22"
        res4_diff = (
            f"{np.abs(res4.numpy() - golden[res4_key].astype(np.float32)).max():.1e}" if res4_key in golden else "-"
        )
        rpn = (
            f"{np.abs(objectness_probabilities(logits).numpy() - golden['blob/rpn_cls_prob_reshape'].astype(np.float32)).max():.1e}"
            if "blob/rpn_cls_prob_reshape" in golden
            else "-"
        )
        if "blob/rpn_cls_prob_reshape" in golden and golden["blob/rpn_cls_prob_reshape"].dtype == np.float32:
            probabilities = torch.from_numpy(golden["blob/rpn_cls_prob_reshape"])
            deltas = torch.from_numpy(golden["blob/rpn_bbox_pred"])
            anchors = generator.anchor_generator.cell_anchors.shape[0]
            with torch.no_grad():
                boxes, _ = generator.proposals_from_scores(
                    probabilities[0, anchors:].permute(1, 2, 0).reshape(-1),
                    deltas[0].permute(1, 2, 0).reshape(-1, 4),
                    generator.anchor_generator(*probabilities.shape[2:]),
                    int(golden["im_info"][0, 0]),
                    int(golden["im_info"][0, 1]),
                    torch.tensor(golden["im_info"][0, 2]),
                )
            from_maps = "bit-exact" if torch.equal(boxes, torch.from_numpy(golden["rois"][:, 1:])) else "differ"
        else:
            from_maps = "-"
        proposals = outputs.proposals[0, : outputs.num_proposals[0]].numpy()
        end_to_end = box_agreement(proposals, golden["rois"][:, 1:])
        same_rois = proposals.shape == golden["rois"][:, 1:].shape and end_to_end == "same order"
        pool5 = (
            f"{np.abs(outputs.proposal_features[0].numpy() - golden['pool5_flat']).max():.1e}" if same_rois else "-"
        )
        cls = f"{np.abs(outputs.class_probs[0].numpy() - golden['cls_prob']).max():.1e}" if same_rois else "-"
        max_conf = per_class_nms_max_scores(
            torch.from_numpy(golden["cls_boxes"]), torch.from_numpy(golden["cls_prob"][:, 1:]), 0.3
        )
        max_conf_text = "bit-exact" if torch.equal(max_conf, torch.from_numpy(golden["max_conf"])) else "differ"
        selections = []
        for suffix, (low, high) in MODES.items():
            with torch.no_grad():
                selected = model(**batch, min_boxes=low, max_boxes=high)
            count = int(selected.num_boxes[0])
            boxes = selected.boxes[0, :count].numpy()
            features = selected.region_features[0, :count].numpy()
            agreement = box_agreement(boxes, golden[f"boxes{suffix}"])
            cosine = max_cosine_matching(features, golden[f"features{suffix}"])
            selections.append(f"{agreement}, cos {cosine:.6f}")
        print(
            f"{name:18s} | {data:8s} | {res4_diff:8s} | {rpn:8s} | {from_maps:16s} | {end_to_end:10s} | {pool5:8s} | "
            f"{cls:8s} | {max_conf_text:14s} | {selections[0]:16s} | {selections[1]}"
        )


def regenerate_full_weights(folder: Path, golden: Path = GOLDEN) -> Path:
    """The FULL ResNet-101 seed-0 weights (262 MB), written into `folder` by the golden generator."""
    weights = folder / "full_seed0.caffemodel"
    generator = [sys.executable, str(golden / "refgen" / "make_caffemodel.py"), str(golden / "test_full.prototxt")]
    subprocess.run([*generator, str(weights), "--seed", "0"], check=True, capture_output=True)
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also the FULL ResNet-101 network on its 2 images")
    args = parser.parse_args()
    report("tiny", load_model(GOLDEN / "tiny_seed0.caffemodel"), list(IMAGES))
    if args.full:
        with tempfile.TemporaryDirectory() as folder:
            weights = regenerate_full_weights(Path(folder))
            report("full", load_model(weights), ["astronaut", "gradient_500x375"])


if __name__ == "__main__":
    main()
