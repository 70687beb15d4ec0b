"""Every number the two papers publish, as data (copied from shared/PAPERS.md), keyed by dmlight's model names.

Accuracies and losses are in percent / raw loss units as printed; (mean, std) pairs are over
N_RUNS runs. The USE paper's "ReLU" and "Abs" have a bias in the head Linear, so dmlight
calls them "ReLU_Bias" and "Abs_Bias".

    >>> USE_SCALE["ReLU_Bias"][USE_SCALE_POINTS.index(0.10)]
    98.1
    >>> LEARN_TEST["ReLU2"]
    (56.31, 19.31)
"""
from __future__ import annotations

N_RUNS = 20  # independent initialisations per model in both papers
# The papers' experiments, models and USE's perturbation kinds, in the order the report and the dashboard show them.
EXPERIMENT_ORDER = ("use_distance_metrics", "learn_distance_metrics", "learn_bias", "offset_l2")
MODEL_ORDER = ("ReLU", "Abs", "ReLU2", "Abs2", "ReLU2-Neg", "Abs2-Neg",
               "ReLU-L2", "ReLU-L2-Neg", "Abs-L2", "Abs-L2-Neg")
USE_KINDS = ("scale", "clip", "offset")  # before the activation (pre_activation)
LEARN_KINDS = ("clamp_min", "clamp_max")  # on the activation's output (post_activation)
# Beyond the papers (the study, docs/study.md): each unit's own scale, an intensity change that a positively
# homogeneous activation cannot absorb into the next layer (a uniform scale it can). Before the activation.
STUDY_KINDS = ("unit_scale",)
# What each kind changes: a unit's intensity (how strongly it fires) or its distance code (where its zero sits).
KIND_CODE = {"scale": "intensity", "clip": "intensity", "unit_scale": "intensity", "offset": "distance",
             "clamp_min": "distance", "clamp_max": "intensity"}

# ---- USE: "Neural Networks Use Distance Metrics" (arXiv:2411.17932)
USE_MODELS = ("ReLU_Bias", "Abs_Bias")

# Baseline on the training set (train, test accuracy %, train loss): (mean, std).
USE_BASELINE = {
    "Abs_Bias": {"train": (99.99, 0.00), "test": (95.29, 0.20), "loss": (0.0047, 0.0005)},
    "ReLU_Bias": {"train": (98.33, 0.15), "test": (95.61, 0.14), "loss": (0.0610, 0.0044)},
}

# Mean training-set accuracy (%) at the paper's points; magnitudes are fractions (0.05 = 5%).
USE_SCALE_POINTS = (0.01, 0.05, 0.10, 0.25, 0.50, 10.0)
USE_SCALE = {
    "Abs_Bias": (94.76, 99.86, 99.98, 99.98, 99.99, 99.99),
    "ReLU_Bias": (75.33, 97.33, 98.10, 98.31, 98.33, 98.33),
}
USE_CLIP_POINTS = (0.01, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.75)
USE_CLIP = {
    "Abs_Bias": (52.90, 60.13, 71.05, 88.55, 96.11, 98.70, 99.60, 99.98),
    "ReLU_Bias": (75.93, 82.57, 87.56, 93.84, 96.67, 97.74, 98.14, 98.33),
}
USE_OFFSET_POINTS = (-2.00, -1.00, -0.75, -0.50, -0.25, -0.10, -0.05, -0.03, -0.02, -0.01,
                     0.01, 0.02, 0.03, 0.05, 0.10, 0.25, 0.50, 0.75, 1.00)
USE_OFFSET = {
    "Abs_Bias": (11.04, 12.60, 14.79, 21.78, 49.03, 86.25, 95.49, 97.86, 98.95, 99.82,
                 99.81, 98.85, 97.70, 95.00, 81.40, 23.43, 11.14, 9.81, 9.78),
    "ReLU_Bias": (18.77, 41.68, 55.16, 72.90, 90.24, 96.55, 97.78, 98.13, 98.24, 98.31,
                  98.26, 98.14, 97.99, 97.62, 96.31, 81.60, 32.54, 13.94, 9.41),
}
# kind -> (points, {model: values}), the shape the report iterates over
USE_POINTS = {
    "scale": (USE_SCALE_POINTS, USE_SCALE),
    "clip": (USE_CLIP_POINTS, USE_CLIP),
    "offset": (USE_OFFSET_POINTS, USE_OFFSET),
}

# ---- LEARN: "Neural Networks Learn Distance Metrics" (arXiv:2502.02103)
# Test accuracy % (mean, std): 5,000 epochs without and with head bias; OffsetL2 at 50,000 epochs.
LEARN_TEST = {
    "Abs": (95.87, 0.22), "ReLU": (96.62, 0.17), "Abs2": (95.95, 0.17),
    "Abs2-Neg": (92.25, 2.07), "ReLU2": (56.31, 19.31), "ReLU2-Neg": (96.46, 0.17),
    "Abs_Bias": (95.23, 0.16), "ReLU_Bias": (95.69, 0.17), "Abs2_Bias": (95.38, 0.17),
    "Abs2-Neg_Bias": (90.53, 2.36), "ReLU2_Bias": (39.94, 18.84), "ReLU2-Neg_Bias": (94.92, 0.18),
    "ReLU-L2": (97.33, 0.13), "ReLU-L2-Neg": (97.36, 0.14),
    "Abs-L2": (97.61, 0.07), "Abs-L2-Neg": (97.56, 0.09),
}
# The paper's discussion quotes other figures for some of the same models (it is not self-consistent).
LEARN_TEST_DISCUSSION = {
    "ReLU2": (47.20, 12.00), "ReLU2-Neg": (94.93, 0.15), "Abs2": (95.35, 0.17), "Abs2-Neg": (90.08, 2.56),
}

# Pairwise tests (a, b, t, p as printed, |d|); t is for a - b as printed, p "" when not given.
LEARN_PAIRS = (
    ("ReLU", "Abs", 1.14, "0.26", 0.37),
    ("ReLU2", "ReLU", -17.33, "<0.001", 5.56),
    ("Abs2", "Abs", 1.50, "0.14", 0.47),
    ("Abs2-Neg", "Abs", -8.81, "<0.001", 2.79),
    ("Abs2-Neg", "Abs2", 8.97, "", 2.84),
)

# Dead output units of ReLU2 (fraction of the 10 output units): paper text 33%, its notes 22%.
LEARN_DEAD = {("ReLU2", "output_activation"): "33% dead (notes: 22%); 53.5% active on <5% of inputs"}


def use_table_grids() -> dict[str, list[float]]:
    """{kind: the magnitudes of the USE paper's table}, the grids of `perturbation=use_table`.

        >>> {kind: len(points) for kind, points in use_table_grids().items()}
        {'scale': 6, 'clip': 8, 'offset': 19}
        >>> use_table_grids()["clip"][-1]
        0.75
    """
    return {kind: list(points) for kind, (points, _) in USE_POINTS.items()}
