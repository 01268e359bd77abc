"""The click model: one two-tower ensemble member (torch), its numpy inference, and the PCA
projection of the text embeddings it reads (see :mod:`copyloop.envs.clicksim` for the logit)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from copyloop.envs.clicksim.config import ClickSimError
from copyloop.envs.text import N_TEXT_FEATURES

_F32 = npt.NDArray[np.float32]


def embedding_pca(copy: _F32, k: int) -> tuple[_F32, _F32]:
    """Mean and top-``k`` principal axes of the embedding part of copy inputs (over distinct
    variants; signs fixed so the largest loading is positive). ``k=0``: no projection."""
    emb = copy[:, :-N_TEXT_FEATURES].astype(np.float64)
    if k == 0:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    mean = emb.mean(0)
    _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
    vt = vt[: min(k, vt.shape[0])]
    vt = vt * np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])[:, None]
    return mean.astype(np.float32), vt.astype(np.float32)


def project(copy: _F32, mean: _F32, components: _F32) -> _F32:
    """``[PCA(embedding) | text features]``; identity when there are no components."""
    if components.size == 0:
        return copy
    emb = copy[:, :-N_TEXT_FEATURES]
    if emb.shape[1] != mean.size:
        raise ClickSimError(
            f"text embeddings have {emb.shape[1]} dimensions, the simulator was fit on "
            f"{mean.size} — use the same text encoder"
        )
    return np.hstack([(emb - mean) @ components.T, copy[:, -N_TEXT_FEATURES:]]).astype(np.float32)


class TwoTower(nn.Module):
    """One ensemble member (see the module docstring for the logit)."""

    def __init__(self, du: int, dv: int, n_campaigns: int, hidden: int, factors: int) -> None:
        super().__init__()
        out = factors + 1  # column 0: first-order term, the rest: interaction factors
        self.user = nn.Sequential(nn.Linear(du, hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.copy = nn.Sequential(nn.Linear(dv, hidden), nn.ReLU(), nn.Linear(hidden, out))
        # Row n_campaigns is the "unknown campaign" (always zero: never trained).
        self.campaign = nn.Embedding(n_campaigns + 1, out)
        nn.init.zeros_(self.campaign.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, u: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        uu = self.user(u)
        vv = self.copy(v) + self.campaign(c)
        return self.bias + uu[:, 0] + vv[:, 0] + (uu[:, 1:] * vv[:, 1:]).sum(1)


def np_mlp(seq: nn.Sequential) -> Callable[[_F32], _F32]:
    first, last = seq[0], seq[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    w1 = first.weight.detach().numpy().T.copy()
    b1 = first.bias.detach().numpy().copy()
    w2 = last.weight.detach().numpy().T.copy()
    b2 = last.bias.detach().numpy().copy()

    def f(x: _F32) -> _F32:
        h = x @ w1
        h += b1
        np.maximum(h, 0.0, out=h)
        y = h @ w2
        y += b2
        return y.astype(np.float32, copy=False)

    return f
