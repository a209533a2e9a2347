"""The decision log: one JSON line per policy decision, almost free on the hot path (issue 12).

`lines` says what a line holds and encodes it; `log` buffers lines and writes them in batches.
"""

from sentinel.audit.lines import DecisionEntry, LineFormatter, RequestIds, encode_entry, encode_tail
from sentinel.audit.log import (
    DEFAULT_CAPACITY,
    DEFAULT_FLUSH_INTERVAL,
    MAX_BATCH,
    DecisionLog,
    DecisionLogger,
    DecisionLogStatistics,
    NullDecisionLogger,
    open_decision_log,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_FLUSH_INTERVAL",
    "MAX_BATCH",
    "DecisionEntry",
    "DecisionLog",
    "DecisionLogStatistics",
    "DecisionLogger",
    "LineFormatter",
    "NullDecisionLogger",
    "RequestIds",
    "encode_entry",
    "encode_tail",
    "open_decision_log",
]
