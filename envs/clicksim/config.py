"""How to fit a click simulator, and the error every part of it raises."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


class ClickSimError(ValueError):
    """A click simulator could not be fit, loaded or used; the message says what to fix."""


@dataclass(frozen=True)
class ClickSimConfig:
    """How to fit a :class:`ClickSimulator`.

    Attributes:
        members: ensemble size (>= 1; their spread is the epistemic uncertainty, 5+ recommended).
        hidden: width of each tower's hidden layer.
        factors: dimension of the user × copy interaction.
        epochs: most passes over the training rows (early stopping usually ends sooner).
        patience: epochs without validation improvement before a member stops.
        batch_size: rows per gradient step.
        lr: Adam learning rate.
        weight_decay: L2 penalty (AdamW).
        embedding_pca: principal components of the text embeddings (over the log's variants)
            the copy tower reads (0 = the full embedding). Fewer inputs, less memorisation of
            individual variants, better generalisation to new copy.
        weighting: ``"none"`` (plain likelihood), ``"ipw"`` (propensity weights on the likelihood,
            early stopping and calibration, see the module doc) or ``"ipw-select"`` (plain
            likelihood; propensity weights on early stopping and calibration only).
        max_weight: clip of the self-normalised propensity weights.
        weight_power: flattening exponent of the weights (1 = plain importance weights; the
            default 0.5 trades a little bias for much less variance, which won in
            ``experiments/clicksim_fidelity.py``).
        calibration: ``"platt"`` (temperature + bias on the ensemble logit), ``"isotonic"`` or
            ``"none"``.
        holdout: fraction of rows held out for early stopping and calibration.
        bootstrap: train each member on a Poisson(1) bootstrap of the rows (off by default: the
            members of a deep ensemble already disagree where data are thin, and bootstrapping
            throws away a third of each member's rows).
        seed: seed of the split, the bootstraps, the initialisations and the batch order.
    """

    members: int = 5
    hidden: int = 64
    factors: int = 16
    epochs: int = 30
    patience: int = 3
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 1e-4
    embedding_pca: int = 8
    weighting: str = "none"
    max_weight: float = 50.0
    weight_power: float = 0.5
    calibration: str = "platt"
    holdout: float = 0.1
    bootstrap: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "members": self.members >= 1,
            "hidden": self.hidden >= 1,
            "factors": self.factors >= 1,
            "epochs": self.epochs >= 1,
            "patience": self.patience >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "embedding_pca": self.embedding_pca >= 0,
            "max_weight": self.max_weight >= 1,
            "holdout": 0.0 < self.holdout < 0.5,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ClickSimConfig: invalid `{name}`={getattr(self, name)!r}")
        if self.weighting not in ("none", "ipw", "ipw-select"):
            raise ValueError(
                f"`weighting` must be 'none', 'ipw' or 'ipw-select', got {self.weighting!r}"
            )
        if not 0.0 < self.weight_power <= 1.0:
            raise ValueError(f"`weight_power` must be in (0, 1], got {self.weight_power}")
        if self.calibration not in ("platt", "isotonic", "none"):
            raise ValueError(
                f"`calibration` must be 'platt', 'isotonic' or 'none', got {self.calibration!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClickSimConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown click-simulator setting(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**d)
