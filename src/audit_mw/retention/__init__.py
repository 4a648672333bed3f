"""Retention: a lifecycle policy over the partitioned trail, legal holds, and the cut.

See ``docs/scaling.md`` and ``docs/integrity.md`` ("Retention"). The modules:
:mod:`~audit_mw.retention.policy` (presets and durations, pure),
:mod:`~audit_mw.retention.holds` (legal holds) and :mod:`~audit_mw.retention.apply`
(deciding and dropping partitions). Retention checkpoints live with the other checkpoints,
in :mod:`audit_mw.integrity.retention`.
"""

from audit_mw.retention.apply import (
    PartitionDecision,
    RetentionResult,
    apply_retention,
    plan_retention,
)
from audit_mw.retention.holds import LegalHold, add_hold, list_holds, release_hold
from audit_mw.retention.policy import MIN_MONTHS, PRESETS, RetentionPolicy, parse_policy

__all__ = [
    "MIN_MONTHS",
    "PRESETS",
    "LegalHold",
    "PartitionDecision",
    "RetentionPolicy",
    "RetentionResult",
    "add_hold",
    "apply_retention",
    "list_holds",
    "parse_policy",
    "plan_retention",
    "release_hold",
]
