"""The one map from a line of copy to the features agents see, fitted once and saved.

A variant is shown to agents as ``[standardised PCA components of its MiniLM embedding |
readable text features]``. The PCA basis is fitted on the catalog's embeddings when the catalog
is built and kept here, so a line the catalog never saw (the generator's, an admin's) is
featurized exactly as the catalog's were — no refit, the same space. The catalog, the
generator's loop, the click simulator and the service all go through :class:`CopyFeaturizer`.

Example:
    >>> f = CopyFeaturizer.fit(catalog_embeddings, pca_dim=16)  # doctest: +SKIP
    >>> f.transform(new_embeddings, ["Save 20% on trail shoes today"]).shape  # doctest: +SKIP
    (1, 33)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.envs.text import N_TEXT_FEATURES, text_features

CANDIDATE_BOUND = 10.0
"""Candidate features are clipped to [-10, 10] (the env's declared Box)."""

_F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class CopyFeaturizer:
    """A fitted copy featurizer: the PCA basis of the catalog's embeddings.

    Attributes:
        mean: embedding mean, (e,).
        components: principal directions, sign-fixed (largest loading positive), (k, e).
        scale: standard deviation of each component on the fitting set, (k,).
        pca_dim: components in the features (the basis is zero-padded when k < pca_dim).
    """

    mean: _F32
    components: _F32
    scale: npt.NDArray[np.float64]
    pca_dim: int

    @classmethod
    def fit(cls, embeddings: npt.ArrayLike, pca_dim: int = 16) -> CopyFeaturizer:
        """Fit the basis on ``embeddings`` (n, e)."""
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] < 1:
            raise ValueError(f"`embeddings` must be (n >= 1, e), got shape {emb.shape}")
        if pca_dim < 0:
            raise ValueError(f"`pca_dim` must be >= 0, got {pca_dim}")
        mean = emb.mean(0, keepdims=True)
        if not pca_dim:
            return cls(mean[0], np.zeros((0, emb.shape[1]), np.float32), np.ones(0), 0)
        _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
        k = min(pca_dim, vt.shape[0])
        # SVD signs are arbitrary: fix each component's largest loading positive.
        vt = vt * np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])[:, None]
        scale = np.maximum(s[:k] / np.sqrt(max(len(emb) - 1, 1)), 1e-8).astype(np.float64)
        return cls(mean[0], vt[:k], scale, pca_dim)

    @property
    def dim(self) -> int:
        """Width of the features: ``pca_dim`` + the text features."""
        return self.pca_dim + N_TEXT_FEATURES

    @property
    def embedding_dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, embeddings: npt.ArrayLike, texts: Sequence[str]) -> _F32:
        """Features of lines of copy, (n, :attr:`dim`), float32.

        Args:
            embeddings: their MiniLM embeddings, (n, e), from the encoder the basis was fit on.
            texts: the lines themselves (for the readable text features).
        """
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(
                f"`embeddings` must be (n, {self.embedding_dim}) — embed with the encoder the "
                f"featurizer was fitted with — got shape {emb.shape}"
            )
        if len(texts) != emb.shape[0]:
            raise ValueError(f"{len(texts)} texts but {emb.shape[0]} embeddings — one per line")
        parts = []
        if self.pca_dim:
            k = self.components.shape[0]
            comp = (emb - self.mean[None, :]) @ self.components.T / self.scale
            if k < self.pca_dim:
                comp = np.pad(comp, ((0, 0), (0, self.pca_dim - k)))
            # Standardised components, rounded to 1e-4 so the features (and every agent's arm
            # identities) do not depend on the BLAS thread count behind the products, and
            # clipped so observations stay inside the declared Box.
            comp = np.round(comp, 4)
            parts.append(np.clip(comp, -CANDIDATE_BOUND, CANDIDATE_BOUND).astype(np.float32))
        parts.append(np.clip(text_features(texts), 0.0, CANDIDATE_BOUND))
        return np.concatenate(parts, axis=1).astype(np.float32)

    # ---- persistence (plain arrays: saved inside agent snapshots, no pickle) -------------------
    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "featurizer.mean": self.mean,
            "featurizer.components": self.components,
            "featurizer.scale": self.scale,
            "featurizer.pca_dim": np.array(self.pca_dim),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> CopyFeaturizer:
        try:
            return cls(
                np.asarray(arrays["featurizer.mean"], np.float32),
                np.asarray(arrays["featurizer.components"], np.float32),
                np.asarray(arrays["featurizer.scale"], np.float64),
                int(arrays["featurizer.pca_dim"]),
            )
        except KeyError as e:
            raise ValueError(f"no featurizer in these arrays (missing {e})") from None
