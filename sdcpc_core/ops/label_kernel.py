"""CPU kernel of ``resized_labels``: argmax of bilinearly resized logits, one fused pass.

Every output pixel mixes the four corners of its source cell class by class and keeps the best
class, without ever building the (K, H, W) volume. A cell whose four corners agree on a class that
leads each of them by more than the rounding margin is decided without mixing. A pixel whose two
best mixed values lie within the margin is reported as a near tie: the caller settles it with the
reference's own values (``sdcpc_core.postprocess._settle``).

Compiled with numba (cached on disk after the first call). ``available()`` is False where numba
is not installed; ``sdcpc_core.postprocess`` then uses its PyTorch path.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is an install requirement; the fallback is tested
    numba = None


def available() -> bool:
    return numba is not None


def _summarise(x, margin, scale, arg, sure, finite):
    """Per source pixel of x (N, K): largest |logit|, best class (first on ties), whether it
    leads the runner-up by more than margin * scale, and whether every logit is finite."""
    k_n = x.shape[1]
    for n in numba.prange(x.shape[0]):
        row = x[n]
        best, second, largest, cls, ok = -np.inf, -np.inf, 0.0, 0, True
        for k in range(k_n):
            val = row[k]
            if not abs(val) < np.inf:  # NaN or inf
                ok = False
            largest = max(largest, abs(val))
            if val > best:
                second, best, cls = best, val, k
            elif val > second:
                second = val
        scale[n], arg[n], finite[n] = largest, cls, ok
        sure[n] = best - second > margin * largest


def _kernel(x, scale, arg, sure, y0, y1, fy, x0, x1, fx, groups, column_groups, margin, labels, tie):
    """x (h, w, K) float32 classes-last; scale, arg, sure (h, w) from ``_summarise``;
    y0/y1/fy (H,) and x0/x1/fx (W,) bilinear sources and weights; groups (G + 1,) the first
    output row of each run of rows sharing one source row pair (y0 is non-decreasing), and
    column_groups the same for columns. Writes labels (H, W) int64 and tie (H, W) bool (True:
    near tie, to be settled by the caller).

    Parallel over row groups; per source cell (a row group × a column group):
    - a class whose largest corner is below the best smallest corner (less twice the margin)
      cannot win anywhere in the cell (every bilinear value lies between a class's corners, to
      within rounding far below the margin): only the cell's other classes are mixed;
    - per column, the two width-mixed rows of those classes are computed once, and a class
      whose larger one is below the best smaller one (less the margin) cannot win in that
      column: only the remaining candidates are mixed row by row.
    The column's candidates and values are the same as when every class is mixed (the best
    smaller value always belongs to a cell candidate), so labels and ties are too."""
    k_n = x.shape[2]
    for g in numba.prange(groups.shape[0] - 1):
        first_row, end_row = groups[g], groups[g + 1]
        a, b = y0[first_row], y1[first_row]
        in_cell = np.empty(k_n, np.int64)
        cp = np.empty(k_n, np.float32)
        cq = np.empty(k_n, np.float32)
        cr = np.empty(k_n, np.float32)
        cs = np.empty(k_n, np.float32)
        top = np.empty(k_n, np.float32)
        bottom = np.empty(k_n, np.float32)
        cand = np.empty(k_n, np.int64)
        cand_top = np.empty(k_n, np.float32)
        cand_bottom = np.empty(k_n, np.float32)
        v = np.empty(k_n, np.float32)
        for cg in range(column_groups.shape[0] - 1):
            first_col, end_col = column_groups[cg], column_groups[cg + 1]
            c, d = x0[first_col], x1[first_col]
            cls = arg[a, c]
            if (sure[a, c] and sure[a, d] and sure[b, c] and sure[b, d]
                    and arg[a, d] == cls and arg[b, c] == cls and arg[b, d] == cls):
                for i in range(first_row, end_row):  # a decided cell: one class wins everywhere
                    for j in range(first_col, end_col):
                        labels[i, j] = cls
                        tie[i, j] = False
                continue
            p, q, r, s = x[a, c], x[a, d], x[b, c], x[b, d]
            room = margin * max(max(scale[a, c], scale[a, d]), max(scale[b, c], scale[b, d]))
            lowest = np.float32(-np.inf)
            for k in range(k_n):
                lowest = max(lowest, min(min(p[k], q[k]), min(r[k], s[k])))
            lowest -= 2 * room
            n_cell = 0
            for k in range(k_n):  # the cell's candidates (branch-free), then their corners packed
                in_cell[n_cell] = k
                n_cell += max(max(p[k], q[k]), max(r[k], s[k])) >= lowest
            for m in range(n_cell):
                k = in_cell[m]
                cp[m], cq[m], cr[m], cs[m] = p[k], q[k], r[k], s[k]
            for j in range(first_col, end_col):
                wx = fx[j]
                for m in range(n_cell):
                    top[m] = cp[m] + wx * (cq[m] - cp[m])
                    bottom[m] = cr[m] + wx * (cs[m] - cr[m])
                floor = np.float32(-np.inf)
                for m in range(n_cell):
                    floor = max(floor, min(top[m], bottom[m]))
                floor -= room
                n = 0
                for m in range(n_cell):
                    if max(top[m], bottom[m]) >= floor:
                        cand[n], cand_top[n], cand_bottom[n] = in_cell[m], top[m], bottom[m]
                        n += 1
                for i in range(first_row, end_row):
                    wy = fy[i]
                    best = np.float32(-np.inf)
                    winner = 0
                    for m in range(n):
                        val = cand_top[m] + wy * (cand_bottom[m] - cand_top[m])
                        v[m] = val
                        if val > best:
                            best, winner = val, m
                    limit = best - room
                    near = 0
                    for m in range(n):
                        near += v[m] >= limit
                    labels[i, j] = cand[winner]
                    tie[i, j] = near > 1


_compiled = {}
# numba's fallback threading layer (workqueue, where neither OpenMP nor TBB is usable) must not be
# entered from two threads at once; the node and the evaluation may call from several threads
_LOCK = threading.Lock()


def _compiled_kernel(name):
    if name not in _compiled:
        # ``_summarise`` keeps IEEE semantics (it finds NaN/inf); the main kernel runs on finite
        # logits only (nnan/ninf) and never reassociates, so each lerp is evaluated as written
        # (its rounding is what the margin covers)
        flags = {"nnan", "ninf", "nsz"} if name == "kernel" else False
        fn = _kernel if name == "kernel" else _summarise
        try:
            _compiled[name] = numba.njit(fn, parallel=True, cache=True, nogil=True, fastmath=flags)
        except RuntimeError:  # no writable cache location (a read-only install without a home)
            _compiled[name] = numba.njit(fn, parallel=True, cache=False, nogil=True, fastmath=flags)
    return _compiled[name]


_launched = False


def _launch(kernel, threads: int, *args) -> None:
    """Run a compiled kernel on ``threads`` threads, one caller at a time. The first launch starts
    numba's threading layer, and its OpenMP layer then sets the process's OpenMP thread count (the
    one PyTorch reads, where both share libgomp) to all cores: PyTorch's own count is put back."""
    global _launched
    torch = None if _launched else sys.modules.get("torch")
    with _LOCK:
        before = torch.get_num_threads() if torch is not None else None
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        kernel(*args)
        _launched = True
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def summarise(pixels: np.ndarray, margin: float, threads: int):
    """(N, K) float32 -> (scale (N,) float32, arg (N,) int64, sure (N,) bool, finite (N,) bool)."""
    n = pixels.shape[0]
    out = (np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.bool_), np.empty(n, np.bool_))
    _launch(_compiled_kernel("summarise"), threads, pixels, np.float32(margin), *out)
    return out


def _runs(lower: np.ndarray) -> np.ndarray:
    """(R + 1,) int64: the first output index of each run of outputs that share one source pair
    (``lower`` is non-decreasing), then the end."""
    return np.flatnonzero(np.r_[True, lower[1:] != lower[:-1], True]).astype(np.int64)


def resized_labels_cpu(x: np.ndarray, scale: np.ndarray, arg: np.ndarray, sure: np.ndarray,
                       sources_y, sources_x, margin: float, threads: int):
    """x (h, w, K) and its summary (each (h, w)) -> (labels (H, W) int64, tie (H, W) bool)."""
    y0, y1, fy = (np.ascontiguousarray(t) for t in sources_y)
    x0, x1, fx = (np.ascontiguousarray(t) for t in sources_x)
    labels = np.empty((y0.shape[0], x0.shape[0]), np.int64)
    tie = np.empty((y0.shape[0], x0.shape[0]), np.bool_)
    groups, column_groups = _runs(y0), _runs(x0)
    _launch(_compiled_kernel("kernel"), threads, x, scale, arg, sure, y0, y1, fy, x0, x1, fx, groups,
            column_groups, np.float32(margin), labels, tie)
    return labels, tie
