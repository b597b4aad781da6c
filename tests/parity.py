"""Comparisons shared by the golden parity tests: what "the same proposals" and "the same selection" mean when two
implementations agree to float rounding."""

import numpy as np
import torch

from butd_frcnn.ops_butd_frcnn import per_class_nms_max_scores

BOX_ATOL = 2e-4  # px: proposal corners move by ulps of the RPN deltas (measured <= 2.8e-4 px FULL, 1.3e-4 TINY)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def tie_groups(scores: np.ndarray) -> list[np.ndarray]:
    """Runs of consecutive positions with exactly equal scores."""
    boundaries = np.flatnonzero(np.diff(scores) != 0) + 1
    return np.split(np.arange(len(scores)), boundaries)


def assert_same_boxes_up_to_tied_order(ours: np.ndarray, scores: np.ndarray, theirs: np.ndarray, atol=BOX_ATOL):
    """Same boxes at every position, except that boxes whose scores (ours) tie exactly may come in another order:
    the order of exact ties depends on every value of the array the sort saw, and ours differ in the last bits."""
    assert ours.shape == theirs.shape, f"{len(ours)} boxes vs {len(theirs)}"
    for group in tie_groups(scores):
        mine, original = ours[group], theirs[group]
        if np.abs(mine - original).max(initial=0) <= atol:
            continue
        assert len(group) > 1, f"box {group[0]} differs: {mine[0]} vs {original[0]}"
        distance = np.abs(mine[:, None, :] - original[None, :, :]).max(axis=2)
        assert (distance.min(axis=1) <= atol).all() and (distance.min(axis=0) <= atol).all(), (
            f"tied boxes {group.tolist()} are not the same set"
        )


def selection_scores(boxes: torch.Tensor, class_probs: torch.Tensor) -> np.ndarray:
    """`max_conf` of generate_tsv.py for our regions."""
    return per_class_nms_max_scores(boxes, class_probs[:, 1:], 0.3).numpy()


def assert_same_selection_up_to_near_ties(
    ours: np.ndarray, our_scores: np.ndarray, theirs: np.ndarray, tol: float = 1e-5, atol: float = BOX_ATOL
):
    """Same boxes; where the order differs, the swapped regions' scores (ours) differ by less than `tol`, the
    numerical agreement of the two implementations' probabilities: a near-tie either side may break."""
    assert ours.shape == theirs.shape, f"{len(ours)} regions vs {len(theirs)}"
    for position in range(len(ours)):
        if np.abs(ours[position] - theirs[position]).max() <= atol:
            continue
        match = np.flatnonzero(np.abs(ours - theirs[position]).max(axis=1) <= atol)
        assert match.size == 1, f"region {theirs[position]} of the original is not among ours"
        assert abs(our_scores[match[0]] - our_scores[position]) < tol, (
            f"regions {position} and {match[0]} swapped although their scores differ by "
            f"{abs(our_scores[match[0]] - our_scores[position]):.3g}"
        )
