"""copyloop: closed-loop optimisation of marketing copy.

One import name for every room: ``copyloop.envs`` (users, catalog, click world, Gymnasium envs),
``copyloop.agents`` (policies), ``copyloop.generator`` (LM copy generation), ``copyloop.ope``
(off-policy evaluation) and ``copyloop.experiments``. The log contract lives here.
"""

from __future__ import annotations

from copyloop.contract import (
    SCHEMA_VERSION,
    DecisionLog,
    DecisionLogWriter,
    LogValidationError,
    VariantsTable,
    validate_log_table,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "DecisionLog",
    "DecisionLogWriter",
    "LogValidationError",
    "VariantsTable",
    "__version__",
    "validate_log_table",
]
