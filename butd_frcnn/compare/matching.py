"""One-to-one matching of two sets of regions: by box overlap, or by feature similarity.

Both maximise a total weight (IoU, cosine): `optimal_assignment` exactly (the Hungarian method, shortest augmenting
paths with potentials, O(n^3)), `greedy_assignment` by taking the heaviest remaining pair first. Pairs of weight 0
or less are not matches.
"""

import numpy as np


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """`(Na, Nb)` IoU of `(x1, y1, x2, y2)` boxes with the original's inclusive convention (width = x2 - x1 + 1)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def cosine_similarity(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """`(Na, Nb)` cosine similarity of feature rows (0 where a row is all zeros)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
    dots = a @ b.T
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _min_cost_rows(cost: np.ndarray) -> np.ndarray:
    """For a cost matrix with no more rows than columns: the column of each row in a minimum-cost assignment."""
    rows, columns = cost.shape
    row_potential = np.zeros(rows + 1)
    column_potential = np.zeros(columns + 1)
    owner = np.zeros(columns + 1, dtype=np.int64)  # owner[j]: 1-based row holding column j (column 0: the new row)
    previous = np.zeros(columns + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0] = row
        column = 0
        slack = np.full(columns + 1, np.inf)
        visited = np.zeros(columns + 1, dtype=bool)
        while owner[column] != 0:
            visited[column] = True
            current = owner[column]
            reduced = cost[current - 1] - row_potential[current] - column_potential[1:]
            free = ~visited[1:]
            improved = free & (reduced < slack[1:])
            slack[1:][improved] = reduced[improved]
            previous[1:][improved] = column
            candidates = np.where(free, slack[1:], np.inf)
            next_column = int(np.argmin(candidates)) + 1
            delta = candidates[next_column - 1]
            visited_columns = np.nonzero(visited)[0]
            row_potential[owner[visited_columns]] += delta
            column_potential[visited_columns] -= delta
            slack[1:][free] -= delta
            column = next_column
        while column:
            owner[column] = owner[previous[column]]
            column = previous[column]
    assignment = np.full(rows, -1, dtype=np.int64)
    for column in range(1, columns + 1):
        if owner[column]:
            assignment[owner[column] - 1] = column - 1
    return assignment


def _as_pairs(weights: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> list[tuple[int, int]]:
    return sorted((int(r), int(c)) for r, c in zip(rows, columns) if weights[r, c] > 0)


def optimal_assignment(weights: np.ndarray) -> list[tuple[int, int]]:
    """The one-to-one pairs `(i, j)` with the largest total weight (only pairs of positive weight are returned)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.size == 0:
        return []
    if weights.shape[0] <= weights.shape[1]:
        columns = _min_cost_rows(-weights)
        return _as_pairs(weights, np.arange(weights.shape[0]), columns)
    rows = _min_cost_rows(-weights.T)
    return _as_pairs(weights, rows, np.arange(weights.shape[1]))


def greedy_assignment(weights: np.ndarray) -> list[tuple[int, int]]:
    """Pairs taken heaviest first, each row and column at most once (ties: lower row, then lower column)."""
    weights = np.asarray(weights, dtype=np.float64)
    order = np.lexsort((np.indices(weights.shape)[1].ravel(), np.indices(weights.shape)[0].ravel(), -weights.ravel()))
    used_rows, used_columns, pairs = set(), set(), []
    for flat in order:
        row, column = divmod(int(flat), weights.shape[1])
        if weights[row, column] <= 0:
            break
        if row not in used_rows and column not in used_columns:
            used_rows.add(row)
            used_columns.add(column)
            pairs.append((row, column))
    return sorted(pairs)


ASSIGNMENTS = {"hungarian": optimal_assignment, "greedy": greedy_assignment}
