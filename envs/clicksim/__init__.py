"""The learned click simulator: a CTR model fit on any DecisionLog and its variants table.

Users have their own click logs, not our click world. :class:`ClickSimulator` learns
CTR(user, copy) from such a log so the market env, the agents and the generator can run on it,
and :mod:`copyloop.envs.clicksim_report` says how far to trust it.

The model is a two-tower factorisation machine over the log's context features and the copy's
text (its MiniLM embedding plus the readable text features of :mod:`copyloop.envs.text`)::

    logit(u, v, c) = b + w_u(u)  + w_v(v) + w_c[c]                 (first-order terms)
                   + < U(u),  V(v) + C[c] >                         (user × copy × campaign)

with ``U``, ``V`` small MLP towers and ``C`` a learned vector per campaign (the product's own
appeal and who it appeals to). Texts the log never showed are scored through their text tower,
which is what lets the generator be rewarded by the simulator.

Training:

- an ensemble of ``members`` models, each with its own initialisation and batch order (a deep
  ensemble, Lakshminarayanan et al. 2017; optionally each on a Poisson(1) bootstrap of the rows,
  which on 200k-row click logs cost 0.007 AUC, so it is off by default); their disagreement
  (standard deviation of the calibrated CTRs) is the simulator's epistemic uncertainty;
- optional propensity weighting (``weighting="ipw"``): each row is weighted by
  ``(1/K) / propensity`` (self-normalised, clipped at ``max_weight``), so the fit targets the
  uniform-logging distribution instead of the logging policy's, which corrects the bias a skewed
  (e.g. Thompson-sampling) logger leaves in a naive fit;
- early stopping and calibration on a held-out slice of the log: Platt scaling of the ensemble's
  mean logit (temperature and bias), or isotonic regression.

Modules: :mod:`~copyloop.envs.clicksim.config` (:class:`ClickSimConfig`),
:mod:`~copyloop.envs.clicksim.data` (:class:`ClickData`, a log joined to its variants table),
:mod:`~copyloop.envs.clicksim.model` (the torch ensemble member),
:mod:`~copyloop.envs.clicksim.calibration` (:class:`Calibrator`) and
:mod:`~copyloop.envs.clicksim.simulator` (:class:`ClickSimulator`: fit, score, save, load).

Example:
    >>> sim = ClickSimulator.fit(log, variants)                      # doctest: +SKIP
    >>> sim.save("clicksim/")                                         # doctest: +SKIP
    >>> sim = ClickSimulator.load("clicksim/")                        # doctest: +SKIP
    >>> sim.click_reward(["Save 20% today!"], campaign="p123", segment="bargain_hunter")
    ... # doctest: +SKIP
    [0.031]
"""

from __future__ import annotations

from copyloop.envs.clicksim.calibration import Calibrator
from copyloop.envs.clicksim.config import ClickSimConfig, ClickSimError
from copyloop.envs.clicksim.data import ClickData, copy_inputs
from copyloop.envs.clicksim.simulator import BoundSimulator, ClickSimulator, CTRPrediction

__all__ = [
    "BoundSimulator",
    "CTRPrediction",
    "Calibrator",
    "ClickData",
    "ClickSimConfig",
    "ClickSimError",
    "ClickSimulator",
    "copy_inputs",
]
