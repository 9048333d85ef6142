"""Tracked workflows: each opens one MLflow run, does the work, records it.

One module per workflow (:mod:`~ptyparity.runs.simulate`, :mod:`~ptyparity.runs.train`,
:mod:`~ptyparity.runs.infer`, :mod:`~ptyparity.runs.compare`,
:mod:`~ptyparity.runs.pipeline`, :mod:`~ptyparity.runs.importing`,
:mod:`~ptyparity.runs.forward_reference`) over the shared :mod:`~ptyparity.runs.common`. The CLI
and the MLproject entry points are thin shells over these functions. Importing this
package imports no framework and not mlflow (:mod:`ptyparity.tracking` does, lazily).
"""

from ptyparity.runs.common import (CompareResult, ImportResult, InferResult, PipelineResult, SimulateResult,
                                   TrainResult, backend_independent_hash, pair_key)
from ptyparity.runs.compare import resolve_pair, run_compare, run_compare_forward
from ptyparity.runs.forward_reference import run_compare_forward_reference
from ptyparity.runs.importing import run_import
from ptyparity.runs.infer import run_infer
from ptyparity.runs.pipeline import PRESETS, run_pipeline
from ptyparity.runs.resume import resume_train
from ptyparity.runs.simulate import run_simulate
from ptyparity.runs.train import run_train

__all__ = ["CompareResult", "ImportResult", "InferResult", "PipelineResult", "SimulateResult", "TrainResult",
           "PRESETS", "backend_independent_hash", "pair_key", "resolve_pair", "run_compare", "run_compare_forward",
           "run_compare_forward_reference", "run_import", "run_infer", "run_pipeline", "resume_train", "run_simulate",
           "run_train"]
