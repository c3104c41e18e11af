"""Offline evaluation and calibration of policies, with the same engine that serves.

Names load on first use: serving needs ``resolve_tiers`` and ``ensure_models``, not the
calibration and plotting machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade._lazy import lazy_exports

if TYPE_CHECKING:
    from cascade.evaluate._bounds import loss_upper_bound
    from cascade.evaluate._calibrate import (
        CalibrationResult,
        Target,
        calibrate_policy,
        calibration_provenance,
    )
    from cascade.evaluate._data import labelled_split
    from cascade.evaluate._frontier import Point, format_frontier, pareto_front, plot_frontier
    from cascade.evaluate._gears import GearCandidate, GearPlan, plan_gears
    from cascade.evaluate._policy_edit import edit_policy_file
    from cascade.evaluate._replay import EvalRow, Evaluator
    from cascade.evaluate._report import format_rows
    from cascade.evaluate._tiers import (
        ModelDriftWarning,
        TierInfo,
        check_provenance,
        ensure_models,
        resolve_tiers,
    )

_LAZY = {
    "loss_upper_bound": "cascade.evaluate._bounds",
    "CalibrationResult": "cascade.evaluate._calibrate",
    "Target": "cascade.evaluate._calibrate",
    "calibrate_policy": "cascade.evaluate._calibrate",
    "calibration_provenance": "cascade.evaluate._calibrate",
    "labelled_split": "cascade.evaluate._data",
    "Point": "cascade.evaluate._frontier",
    "format_frontier": "cascade.evaluate._frontier",
    "pareto_front": "cascade.evaluate._frontier",
    "plot_frontier": "cascade.evaluate._frontier",
    "GearCandidate": "cascade.evaluate._gears",
    "GearPlan": "cascade.evaluate._gears",
    "plan_gears": "cascade.evaluate._gears",
    "edit_policy_file": "cascade.evaluate._policy_edit",
    "EvalRow": "cascade.evaluate._replay",
    "Evaluator": "cascade.evaluate._replay",
    "format_rows": "cascade.evaluate._report",
    "ModelDriftWarning": "cascade.evaluate._tiers",
    "TierInfo": "cascade.evaluate._tiers",
    "check_provenance": "cascade.evaluate._tiers",
    "ensure_models": "cascade.evaluate._tiers",
    "resolve_tiers": "cascade.evaluate._tiers",
}

__all__ = [
    "CalibrationResult",
    "EvalRow",
    "Evaluator",
    "GearCandidate",
    "GearPlan",
    "ModelDriftWarning",
    "Point",
    "Target",
    "TierInfo",
    "calibrate_policy",
    "calibration_provenance",
    "check_provenance",
    "edit_policy_file",
    "ensure_models",
    "format_frontier",
    "format_rows",
    "labelled_split",
    "loss_upper_bound",
    "pareto_front",
    "plan_gears",
    "plot_frontier",
    "resolve_tiers",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
