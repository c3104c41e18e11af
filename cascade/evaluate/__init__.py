"""Offline evaluation and calibration of policies, with the same engine that serves."""

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
