"""Offline evaluation and calibration of policies, with the same engine that serves.

Also where a policy's missing model files get built (:func:`ensure_models`): a convenience
of the command line, never of the servers.
"""

from __future__ import annotations

from cascade.evaluate._bounds import loss_upper_bound
from cascade.evaluate._calibrate import (
    CalibrationResult,
    Target,
    calibrate_policy,
    calibration_provenance,
    confidence_reference,
    write_reference,
)
from cascade.evaluate._data import LabelledRows, labelled_rows, labelled_split, model_classes
from cascade.evaluate._deferral import Certified, certified_threshold
from cascade.evaluate._ensure import ensure_models
from cascade.evaluate._fit import MAX_ISOTONIC_KNOTS, fit_isotonic, fit_temperature
from cascade.evaluate._frontier import Point, format_frontier, pareto_front, plot_frontier
from cascade.evaluate._gears import GearCandidate, GearPlan, plan_gears
from cascade.evaluate._log import FromLogResult, LogRows, calibrate_from_log, read_answer_log
from cascade.evaluate._oracle import Oracle, oracle, oracle_curve, oracle_share
from cascade.evaluate._policy_edit import edit_policy_file
from cascade.evaluate._replay import EvalRow, Evaluator
from cascade.evaluate._report import format_rows
from cascade.evaluate._rule_training import train_deferral

__all__ = [
    "MAX_ISOTONIC_KNOTS",
    "CalibrationResult",
    "Certified",
    "EvalRow",
    "Evaluator",
    "FromLogResult",
    "GearCandidate",
    "GearPlan",
    "LabelledRows",
    "LogRows",
    "Oracle",
    "Point",
    "Target",
    "calibrate_from_log",
    "calibrate_policy",
    "calibration_provenance",
    "certified_threshold",
    "confidence_reference",
    "edit_policy_file",
    "ensure_models",
    "fit_isotonic",
    "fit_temperature",
    "format_frontier",
    "format_rows",
    "labelled_rows",
    "labelled_split",
    "loss_upper_bound",
    "model_classes",
    "oracle",
    "oracle_curve",
    "oracle_share",
    "pareto_front",
    "plan_gears",
    "plot_frontier",
    "read_answer_log",
    "train_deferral",
    "write_reference",
]
