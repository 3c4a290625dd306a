"""Comparison of a step's torch and Paddle logs: table rows, and reprod_log's ``<step>_diff.log``.

A :class:`Check` names a quantity (one table row), the log keys it covers and how they are judged;
each key is judged on its own and the row shows the worst key. Kinds and what PASS means:

``forward``   mean |p - t| <= ``mean_abs`` and max |p - t| / max |t| <= ``max_rel`` (the largest
              error relative to the tensor's scale: elementwise relative error is meaningless
              near zero)
``relative``  max |p - t| / |t| <= ``rel``, elementwise (losses, ``acc_sum``; entries where
              ``t = 0`` must equal 0)
``mean_abs``  mean |p - t| <= ``mean_abs`` (gradients)
``max_abs``   max |p - t| <= ``max_abs`` (anchors, box targets: pixel / delta units)
``exact``     p == t elementwise, same shape (labels, flags, counts)

A check with ``gating=False`` reports INFO instead of FAIL: it is shown, but it does not fail the
run (float32 gradients of step 5, whose float64 twin is the gate; see align/README.md).

Detections are judged by :func:`detection_rows` (same count, labels, matched IoU, scores).
"""

import contextlib
import dataclasses
import io
import logging
import math
import re

import numpy as np

STATUS_PASS = "PASS"
STATUS_FAIL = "FAIL"
STATUS_INFO = "INFO"


@dataclasses.dataclass(frozen=True)
class Check:
    """One table row: the keys matching ``pattern`` (a regex, full match) judged by ``kind``."""

    quantity: str
    pattern: str
    kind: str
    mean_abs: float | None = None
    max_rel: float | None = None
    rel: float | None = None
    max_abs: float | None = None
    gating: bool = True

    def __post_init__(self):
        needed = {
            "forward": ("mean_abs", "max_rel"),
            "relative": ("rel",),
            "mean_abs": ("mean_abs",),
            "max_abs": ("max_abs",),
            "exact": (),
        }
        if self.kind not in needed:
            raise ValueError(f"Check kind {self.kind!r} is not one of {sorted(needed)}")
        for field in needed[self.kind]:
            if getattr(self, field) is None:
                raise ValueError(f"Check {self.quantity!r} of kind {self.kind} needs {field}")

    def threshold_text(self):
        if self.kind == "forward":
            return f"mean<={self.mean_abs:g}, maxrel<={self.max_rel:g}"
        if self.kind == "relative":
            return f"rel<={self.rel:g}"
        if self.kind == "mean_abs":
            return f"mean<={self.mean_abs:g}"
        if self.kind == "max_abs":
            return f"max<={self.max_abs:g}"
        return "exact"


@dataclasses.dataclass
class Row:
    step: str
    quantity: str
    mean_abs: float
    max_abs: float
    threshold: str
    status: str
    note: str = ""
    rel: float | None = None  # worst relative error judged (forward / relative kinds)
    # threshold / judged value, smallest over the row's keys and criteria: the factor by which
    # the worst value could still grow before the row fails (inf when every value is 0;
    # None for exact rows, which have no scale)
    margin: float | None = None
    worst: str = ""  # the judged value that sets the margin, e.g. "maxrel 1.2e-06"


def _ratio(threshold: float, value: float):
    """threshold / value, inf for a value of 0 (the margin left to a threshold)."""
    return math.inf if value == 0 else threshold / value


def key_margin(check: Check, mean_abs: float, max_abs: float, rel: float | None):
    """(margin, the judged value that sets it) of one key (see ``Row.margin``); (None, "") for
    ``exact`` checks."""
    if check.kind == "forward":
        return min(
            (_ratio(check.mean_abs, mean_abs), f"mean {mean_abs:.2e}"),
            (_ratio(check.max_rel, rel), f"maxrel {rel:.2e}"),
        )
    if check.kind == "relative":
        return _ratio(check.rel, rel), f"rel {rel:.2e}"
    if check.kind == "mean_abs":
        return _ratio(check.mean_abs, mean_abs), f"mean {mean_abs:.2e}"
    if check.kind == "max_abs":
        return _ratio(check.max_abs, max_abs), f"max {max_abs:.2e}"
    return None, ""


def _judge_key(check: Check, t: np.ndarray, p: np.ndarray):
    """(mean abs diff, max abs diff, judged relative error or None, passed, note) of one key.

    The relative error is the largest abs diff over the tensor's scale for ``forward`` and the
    largest elementwise one for ``relative``; None for the other kinds.
    """
    if t.shape != p.shape:
        return math.nan, math.nan, None, False, f"shape torch {t.shape} vs paddle {p.shape}"
    if t.size == 0:
        return 0.0, 0.0, None, True, ""
    t64, p64 = t.astype(np.float64), p.astype(np.float64)
    diff = np.abs(p64 - t64)
    mean_abs, max_abs = float(diff.mean()), float(diff.max())
    if not np.all(np.isfinite(p64)):
        return mean_abs, max_abs, None, False, "non-finite values"
    if check.kind == "forward":
        scale = float(np.abs(t64).max())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        ok = mean_abs <= check.mean_abs and max_rel <= check.max_rel
        return mean_abs, max_abs, max_rel, ok, f"mean {mean_abs:.2e}, maxrel {max_rel:.2e}"
    if check.kind == "relative":
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(t64))
        worst = float(rel.max())
        return mean_abs, max_abs, worst, worst <= check.rel, f"rel {worst:.2e}"
    if check.kind == "mean_abs":
        return mean_abs, max_abs, None, mean_abs <= check.mean_abs, f"mean {mean_abs:.2e}"
    if check.kind == "max_abs":
        return mean_abs, max_abs, None, max_abs <= check.max_abs, f"max {max_abs:.2e}"
    n_diff = int(np.count_nonzero(diff))
    return mean_abs, max_abs, None, n_diff == 0, f"{n_diff} of {t.size} differ"


def compare(
    step: str, torch_log: dict, paddle_log: dict, checks: list[Check], floor_log: dict | None = None
):
    """Table rows of ``checks``; keys logged on one side only, or matched by no check, fail.

    A row shows the worst key's mean and max abs diff; its note gives the worst relative error
    (``forward`` / ``relative``) and every failing key with its numbers. ``floor_log``, the same
    step run by the reference in float64, adds to each failing key the reference's own float32
    error (mean |torch f32 - torch f64|): what float32 rounding alone moves that key by.
    """
    rows = []
    covered = set()
    for check in checks:
        regex = re.compile(check.pattern)
        keys = sorted(k for k in set(torch_log) | set(paddle_log) if regex.fullmatch(k))
        covered.update(keys)
        if not keys:
            rows.append(
                Row(
                    step,
                    check.quantity,
                    math.nan,
                    math.nan,
                    check.threshold_text(),
                    STATUS_FAIL,
                    "no key logged",
                )
            )
            continue
        worst_mean, worst_max, worst_rel, passed, failures = 0.0, 0.0, None, True, []
        margin, margin_value = None, ""
        for key in keys:
            if key not in torch_log or key not in paddle_log:
                side = "paddle" if key not in paddle_log else "torch"
                passed = False
                failures.append((math.inf, f"{key}: missing on the {side} side"))
                continue
            mean_abs, max_abs, rel, ok, note = _judge_key(check, torch_log[key], paddle_log[key])
            if check.kind != "exact" and not math.isnan(mean_abs):
                key_m, key_worst = key_margin(check, mean_abs, max_abs, rel)
                if margin is None or key_m < margin:
                    margin, margin_value = key_m, key_worst
            worst_mean = max(worst_mean, mean_abs)
            worst_max = max(worst_max, max_abs)
            if rel is not None:
                worst_rel = rel if worst_rel is None else max(worst_rel, rel)
            if not ok:
                passed = False
                if floor_log is not None and key in floor_log:
                    floor_check = dataclasses.replace(check, kind="mean_abs", mean_abs=0.0)
                    if check.kind in ("forward", "relative"):
                        floor_check = check
                    floor = _judge_key(floor_check, floor_log[key], torch_log[key])
                    value = floor[2] if floor[2] is not None else floor[0]
                    note += f" (torch f32 vs f64: {value:.2e})"
                badness = (
                    rel if rel is not None else mean_abs if check.kind != "max_abs" else max_abs
                )
                failures.append(
                    (badness if not math.isnan(badness) else math.inf, f"{key}: {note}")
                )
        notes = []
        if worst_rel is not None and passed:
            notes.append(f"{'max' if check.kind == 'forward' else ''}rel {worst_rel:.2e}")
        if failures:  # the worst failing key (the first listed when none is worse) and a count
            worst = max(failures, key=lambda f: f[0])
            notes.append(worst[1] + (f"; {len(failures) - 1} more" if len(failures) > 1 else ""))
        rows.append(
            Row(
                step,
                check.quantity,
                worst_mean,
                worst_max,
                check.threshold_text(),
                STATUS_PASS if passed else STATUS_FAIL if check.gating else STATUS_INFO,
                "; ".join(notes),
                worst_rel,
                margin,
                margin_value,
            )
        )
    return rows + unjudged_rows(step, (k for k in torch_log if k not in covered))


def unjudged_rows(step: str, keys) -> list[Row]:
    """One FAIL row naming the logged ``keys`` that no check judged (``meta.*`` aside), or none."""
    unjudged = sorted(k for k in keys if not k.startswith("meta."))
    if not unjudged:
        return []
    return [Row(step, "unjudged keys", math.nan, math.nan, "-", STATUS_FAIL, ", ".join(unjudged))]


def _box_iou(a: np.ndarray, b: np.ndarray):
    """IoU matrix of x1y1x2y2 boxes [M, 4] x [K, 4] in float64, offset 0."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_detections(t_boxes, t_scores, t_labels, p_boxes, p_scores, p_labels):
    """Greedy one-to-one matching, best torch score first, same label, highest IoU.

    Returns:
        (pairs [(i_torch, j_paddle)], ious of the pairs, unmatched torch indices)
    """
    iou = (
        _box_iou(t_boxes, p_boxes)
        if len(t_boxes) and len(p_boxes)
        else np.zeros((len(t_boxes), len(p_boxes)))
    )
    used = np.zeros(len(p_boxes), dtype=bool)
    pairs, ious, unmatched = [], [], []
    for i in np.argsort(-t_scores, kind="stable"):
        cand = np.flatnonzero((p_labels == t_labels[i]) & ~used)
        if cand.size == 0:
            unmatched.append(int(i))
            continue
        j = int(cand[np.argmax(iou[i, cand])])
        used[j] = True
        pairs.append((int(i), j))
        ious.append(float(iou[i, j]))
    return pairs, np.array(ious), unmatched


def detection_rows(
    step: str, torch_log: dict, paddle_log: dict, num_images: int, min_iou: float, score_abs: float
):
    """Rows for detections of each image: count (exact), boxes (min IoU), scores (max abs)."""
    rows = []
    for img in range(num_images):
        keys = [f"img{img}.{k}" for k in ("boxes", "scores", "labels")]
        missing = [k for k in keys if k not in torch_log or k not in paddle_log]
        if missing:
            rows.append(
                Row(
                    step,
                    f"image {img} detections",
                    math.nan,
                    math.nan,
                    "-",
                    STATUS_FAIL,
                    f"missing {missing}",
                )
            )
            continue
        tb, ts, tl = (torch_log[k] for k in keys)
        pb, ps, pl = (paddle_log[k] for k in keys)
        n_t, n_p = len(ts), len(ps)
        rows.append(
            Row(
                step,
                f"image {img} count",
                0.0 if n_t == n_p else float(abs(n_t - n_p)),
                float(abs(n_t - n_p)),
                "equal",
                STATUS_PASS if n_t == n_p and n_t > 0 else STATUS_FAIL,
                f"torch {n_t}, paddle {n_p}",
            )
        )
        pairs, ious, unmatched = match_detections(tb, ts, tl, pb, ps, pl)
        ok_match = not unmatched and len(pairs) == n_t == n_p
        if pairs:
            iou_gap = 1.0 - ious
            rows.append(
                Row(
                    step,
                    f"image {img} boxes (1 - IoU)",
                    float(iou_gap.mean()),
                    float(iou_gap.max()),
                    f"IoU>={min_iou:g}",
                    STATUS_PASS if ok_match and ious.min() >= min_iou else STATUS_FAIL,
                    f"min IoU {ious.min():.6f}"
                    + (f"; {len(unmatched)} unmatched" if unmatched else ""),
                    margin=_ratio(1.0 - min_iou, float(iou_gap.max())),
                    worst=f"1 - IoU {float(iou_gap.max()):.2e}",
                )
            )
            i_t = [i for i, _ in pairs]
            i_p = [j for _, j in pairs]
            sdiff = np.abs(ts[i_t].astype(np.float64) - ps[i_p].astype(np.float64))
            rows.append(
                Row(
                    step,
                    f"image {img} scores",
                    float(sdiff.mean()),
                    float(sdiff.max()),
                    f"max<={score_abs:g}",
                    STATUS_PASS if ok_match and sdiff.max() <= score_abs else STATUS_FAIL,
                    margin=_ratio(score_abs, float(sdiff.max())),
                    worst=f"max {float(sdiff.max()):.2e}",
                )
            )
        else:
            rows.append(
                Row(
                    step,
                    f"image {img} boxes",
                    math.nan,
                    math.nan,
                    f"IoU>={min_iou:g}",
                    STATUS_FAIL,
                    "nothing matched",
                )
            )
    return rows


def write_diff_log(torch_log: dict, paddle_log: dict, path: str, threshold: float):
    """reprod_log's diff report of the keys both logs share with the same shape (mean abs diff vs
    ``threshold``).

    reprod_log's ``init_logger`` adds a stdout and a file handler to the root logger on every
    call; we detach them afterwards so that successive reports neither echo each other nor
    write into each other's files.
    """
    from reprod_log import ReprodDiffHelper

    # keys of different shapes (e.g. a different number of detections) are left to the table rows
    shared = sorted(
        k
        for k in set(torch_log) & set(paddle_log)
        if np.shape(torch_log[k]) == np.shape(paddle_log[k])
    )
    helper = ReprodDiffHelper()
    helper.compare_info(
        {k: np.asarray(torch_log[k], dtype=np.float64) for k in shared},
        {k: np.asarray(paddle_log[k], dtype=np.float64) for k in shared},
    )
    root = logging.getLogger("root")
    saved_handlers, saved_level = list(root.handlers), root.level
    for handler in saved_handlers:  # e.g. ppdet's console handler: keep the report off stdout
        root.removeHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            helper.report(diff_method="mean", diff_threshold=threshold, path=path)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def write_rows_json(rows: list[Row], path: str):
    """The rows as a JSON list of objects (NaN and inf written as strings)."""
    import json

    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value

    records = [{k: plain(v) for k, v in dataclasses.asdict(r).items()} for r in rows]
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


def read_rows_json(path: str) -> list[Row]:
    """Rows written by :func:`write_rows_json`."""
    import json

    def number(value):
        return float(value) if isinstance(value, str) else value

    with open(path) as f:
        records = json.load(f)
    numeric = ("mean_abs", "max_abs", "rel", "margin")
    return [Row(**{k: number(v) if k in numeric else v for k, v in r.items()}) for r in records]


def format_table(rows: list[Row]):
    """Markdown table: step, quantity, mean abs diff, max abs diff, threshold, status, note."""
    lines = [
        "| step | quantity | mean abs diff | max abs diff | threshold | status | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.step} | {r.quantity} | {r.mean_abs:.3e} | {r.max_abs:.3e} | {r.threshold} "
            f"| {r.status} | {r.note} |"
        )
    return "\n".join(lines)
