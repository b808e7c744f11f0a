"""Evaluation timings: vectorized bootstrap vs a scikit-learn loop, numpy Dice vs scikit-learn.

Run: ``python benchmarks/bench_metrics.py`` from the project root. Prints wall and CPU seconds
side by side (CPU seconds are the stable number on a busy machine) and checks that both ways
give the same numbers.
"""

from __future__ import annotations

import time

import numpy as np


def timed(label: str, fn) -> object:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    print(f"{label:<62} wall {w:7.3f} s   CPU {c:7.3f} s")
    return out


def sklearn_bootstrap(y: np.ndarray, yp: np.ndarray, probs: np.ndarray, classes: list[str], n_boot: int,
                      seed: int) -> np.ndarray:
    """The obvious way: scikit-learn metrics on every resample (same stratified resamples)."""
    from hemaflow.lib.metrics import classification_metrics

    rng = np.random.default_rng(seed)
    yt = np.array([classes.index(c) for c in y])
    groups = [np.flatnonzero(yt == c) for c in range(len(classes))]
    idx = np.hstack([g[rng.integers(0, len(g), (n_boot, len(g)))] for g in groups if len(g)])
    out = []
    for row in idx:
        m = classification_metrics(y[row], yp[row], classes, probs[row])
        out.append([m["balanced_accuracy"], m["auroc"]])
    return np.array(out, dtype=float)


def main() -> None:
    import sklearn.metrics  # noqa: F401  (import cost is not metric cost)
    import scipy.stats  # noqa: F401

    from hemaflow.lib.metrics import bootstrap_ci, dice

    rng = np.random.default_rng(0)
    classes = ["ALL", "AML", "CLL", "CML", "NORMAL"]
    for n_patients in (40, 200):
        y = np.array(classes)[rng.integers(0, 5, n_patients)]
        probs = rng.dirichlet(np.ones(5), n_patients)
        probs[np.arange(n_patients), [classes.index(c) for c in y]] += 0.3
        probs /= probs.sum(1, keepdims=True)
        yp = np.array(classes)[probs.argmax(1)]
        n_boot = 300
        fast = timed(f"bootstrap_ci {n_patients} patients x {n_boot} (vectorized)",
                     lambda: bootstrap_ci(y, yp, classes, probs, rng=np.random.default_rng(1), n_bootstrap=n_boot))
        ref = timed(f"scikit-learn loop {n_patients} patients x {n_boot}",
                    lambda: sklearn_bootstrap(y, yp, probs, classes, n_boot, 1))
        lo, hi = np.quantile(ref[:, 0], [0.025, 0.975])
        assert np.allclose(fast["balanced_accuracy_ci"], [lo, hi]), (fast, lo, hi)
        print(f"    same interval: balanced_accuracy_ci {fast['balanced_accuracy_ci']}")

    a = rng.random((1024, 1024)) > 0.5
    b = rng.random((1024, 1024)) > 0.4
    from sklearn.metrics import f1_score

    d1 = timed("dice numpy 1024x1024 x 20", lambda: [dice(a, b) for _ in range(20)])[0]
    d2 = timed("f1_score (scikit-learn) 1024x1024 x 20", lambda: [f1_score(b.ravel(), a.ravel()) for _ in range(20)])[0]
    assert abs(d1 - d2) < 1e-12
    print(f"    same value: {d1:.6f}")


if __name__ == "__main__":
    main()
