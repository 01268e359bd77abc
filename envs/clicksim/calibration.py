"""Calibration of the ensemble's logits to click probabilities (Platt, isotonic or none), and
the (weighted) log-loss it and early stopping minimise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.envs.world import sigmoid as _sigmoid

_F32 = npt.NDArray[np.float32]


def logloss(p: npt.NDArray[np.floating], y: npt.NDArray[np.floating], w: Any = None) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    ll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(ll, weights=w))


@dataclass
class Calibrator:
    """Maps an uncalibrated logit to a calibrated probability (Platt, isotonic or identity)."""

    kind: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def __call__(self, logit: npt.NDArray[np.floating]) -> _F32:
        if self.kind == "isotonic":
            p = _sigmoid(logit)
            return np.interp(p, self.x, self.y).astype(np.float32)
        return _sigmoid(self.a * np.asarray(logit, np.float32) + self.b)

    @classmethod
    def fit(
        cls, kind: str, logit: npt.NDArray[np.floating], y: npt.NDArray[np.floating], w: Any
    ) -> Calibrator:
        if kind == "none":
            return cls("none")
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6)
            iso.fit(_sigmoid(logit), y, sample_weight=w)
            return cls("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
        from scipy.optimize import minimize

        z = np.asarray(logit, np.float64)
        yy = np.asarray(y, np.float64)
        ww = np.ones_like(z) if w is None else np.asarray(w, np.float64)

        def loss(ab: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
            t = ab[0] * z + ab[1]
            p = 1.0 / (1.0 + np.exp(-t))
            ll = np.sum(ww * (np.logaddexp(0.0, t) - yy * t)) / ww.sum()
            g = ww * (p - yy) / ww.sum()
            return float(ll), np.array([np.sum(g * z), np.sum(g)])

        res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        return cls("platt", a=float(res.x[0]), b=float(res.x[1]))
