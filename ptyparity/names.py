"""Names shared by the writers and the readers of a run record (SPEC §6-8).

Every artifact path, tag key, metric prefix and tap name that one module writes and
another reads lives here once, so a rename cannot leave a reader behind.
"""

from __future__ import annotations

# --- taps (SPEC §6), in forward order -------------------------------------------------
# ``pred_intensity`` is not a SPEC tap but every backend returns it (the loss reads it).
TAP_NAMES = ("encoder_input", "amp_patches", "phase_patches", "object_patches", "object_canvas",
             "object_extracted", "exit_wave", "pred_intensity", "pred_amplitude", "pred_amplitude_counts")
# The taps every forward pass returns; ``object_canvas`` only when ``object_big``.
OPTIONAL_TAPS = ("object_canvas",)
# The tap the stitched canvas is built from.
STITCH_TAP = "object_extracted"

# --- experiment and run kinds -----------------------------------------------------------
DEFAULT_EXPERIMENT = "ptyparity"
KINDS = ("simulate", "train", "infer", "compare", "pipeline", "import", "matrix", "matrix_cell")

# --- artifact paths ---------------------------------------------------------------------
SIMULATE_JSON = "simulate.json"
PREVIEW_OBJECT_TRAIN = "preview/object_train.png"
PREVIEW_OBJECT_TEST = "preview/object_test.png"
PREVIEW_PROBE = "preview/probe.png"
PREVIEW_DIFFRACTION = "preview/diffraction.png"
DATA_DIR = "data"  # the simulated NPZ files of a simulate run
CONFIG_JSON = "config.json"
HISTORY_JSON = "history.json"
LOSS_PLOT = "plots/loss.png"
MODEL_ARTIFACT = "model"  # the pyfunc model of a train run: runs:/<id>/model
CHECKPOINT_DIR = "checkpoint"  # a train run's last 2 epochs: slot0/, slot1/ each state.npz + state.json
# The debug dump: an infer run's at DEBUG_DUMP, a train run's at DEBUG_DUMP_INITIAL / _FINAL.
DEBUG_DUMP = "debug_dump"
DEBUG_DUMP_INITIAL = "debug_dump/initial"
DEBUG_DUMP_FINAL = "debug_dump/final"
PATCH_STATS_FILE = "patch_stats.json"
TAPS_FILE = "taps.npz"
PATCH_GRID_NORMALISED_FILE = "patch_grid_normalised.png"
PATCH_GRID_SHARED_FILE = "patch_grid_shared.png"
PATCH_STATS = f"{DEBUG_DUMP}/{PATCH_STATS_FILE}"  # an infer run's
PATCH_GRID_NORMALISED = f"{DEBUG_DUMP}/{PATCH_GRID_NORMALISED_FILE}"  # an infer run's
CANVAS_NPZ = "stitched/canvas.npz"  # arrays "canvas" (H, W) complex, "count" (H, W), "pos" (n, 2)
CANVAS_PNG = "stitched/canvas.png"
PARITY_SUMMARY = "parity/summary.json"
PARITY_REPORT = "parity/report.html"
PARITY_FORWARD = "parity/forward.json"
# compare --forward --reference: per-tap errors of a dumped forward pass against ptyparity's run.
PARITY_FORWARD_REFERENCE = "parity/forward_reference.json"
FORWARD_REFERENCE_FIGURE = "forward_reference_errors"  # parity_figure(key): the per-tap error bars
FORWARD_REFERENCE_TAP_FIGURE = "forward_reference_first_divergent"  # reference, ours, |diff| of that tap


def parity_figure(key):
    """Artifact path of one figure of a compare run, e.g. ``parity/canvases.png``."""
    return f"parity/{key}.png"


# --- tag keys ---------------------------------------------------------------------------
TAG_PREFIX = "ptyparity."
TAG_KIND = "ptyparity.kind"
TAG_BACKEND = "ptyparity.backend"
TAG_DATASET_DIGEST = "ptyparity.dataset_digest"
TAG_TEST_DATASET_DIGEST = "ptyparity.test_dataset_digest"
TAG_CONFIG_HASH = "ptyparity.config_hash"
TAG_PAIR_KEY = "ptyparity.pair_key"
TAG_INIT_FROM = "ptyparity.init_from"
TAG_DATA_WARNINGS = "ptyparity.data_warnings"  # a forced train run: why its data cannot be counts
TAG_ERROR = "ptyparity.error"  # a FAILED run: why (a diverged training, a killed process)
TAG_RESUMED_FROM = "ptyparity.resumed_from"  # a resumed train run: the run whose checkpoint it continued
TAG_RESUMED_EPOCH = "ptyparity.resumed_epoch"  # ... and the epochs that checkpoint held
# Who runs a run (ptyparity.tracking_liveness): a RUNNING run whose process is gone gets marked FAILED.
TAG_OWNER_HOST = "ptyparity.owner.host"
TAG_OWNER_PID = "ptyparity.owner.pid"
TAG_OWNER_STARTED = "ptyparity.owner.started"  # the process's start (boot id + start tick): pid reuse
TAG_HEARTBEAT = "ptyparity.owner.heartbeat"  # unix seconds, renewed every epoch of a training
TAG_TRAIN_RUN_ID = "ptyparity.train_run_id"
TAG_MODEL_URI = "ptyparity.model_uri"
TAG_BUNDLE_BACKEND = "ptyparity.bundle_backend"
TAG_MODEL_NAME = "ptyparity.model_name"
TAG_MODEL_VERSION = "ptyparity.model_version"
# An import run (ptyparity import ptychopinn): where the model came from.
TAG_SOURCE = "ptyparity.source"  # "ptychopinn"
TAG_SOURCE_SHA256 = "ptyparity.source_sha256"  # sha256 of the imported checkpoint file
TAG_UPSTREAM_COMMIT = "ptyparity.upstream_commit"
TAG_IMPORT_RUN_ID = "ptyparity.import_run_id"  # on a model version registered by an import run
# The public record API (ptyparity.record) sets these on every train and infer run it opens.
TAG_RECORD_SCHEMA = "ptyparity.record_schema"
RECORD_SCHEMA_VERSION = 1  # bump when a name or meaning of the record changes
TAG_IMPLEMENTATION = "ptyparity.implementation"  # who computed the arrays: "ptyparity" or the user's code
TAG_IMPLEMENTATION_VERSION = "ptyparity.implementation_version"
# The verdict of a compare run (also set on its source runs and their model versions).
PARITY_STATUS = "parity.status"  # pass | fail | error: the agreement checks
QUALITY_STATUS = "quality.status"  # pass | fail | none: the ground-truth skill checks
PARITY_VERDICT = "parity.verdict"  # pass | fail | inconclusive | error
PARITY_FAILED_CHECKS = "parity.failed_checks"
PARITY_SKIPPED_CHECKS = "parity.skipped_checks"
PARITY_BEST_ORIENTATION = "parity.best_orientation"
PARITY_ERROR = "parity.error"
PARITY_COMPARE_RUN_ID = "parity.compare_run_id"
PARITY_TORCH_RUN_ID = "parity.torch_run_id"
PARITY_TF_RUN_ID = "parity.tf_run_id"
PARITY_TORCH_TRAIN_RUN_ID = "parity.torch_train_run_id"
PARITY_TF_TRAIN_RUN_ID = "parity.tf_train_run_id"
# Who computed each side (ptyparity.implementation + _version of its infer run), e.g. "ptyparity 0.1.0".
PARITY_TORCH_IMPLEMENTATION = "parity.torch_implementation"
PARITY_TF_IMPLEMENTATION = "parity.tf_implementation"
PARITY_ALLOW_MISMATCH = "parity.allow_mismatch"
PARITY_MODE = "parity.mode"  # "forward" or "forward_reference" on a forward compare run
PARITY_REFERENCE_FILE = "parity.reference_file"  # forward_reference: the dump judged
PARITY_REFERENCE_STYLE = "parity.reference_style"  # forward_reference: "ptychopinn" or "ptyparity" key names
PARITY_FIRST_DIVERGENT_TAP = "parity.first_divergent_tap"
PIPELINE_TAG_PREFIX = "pipeline."  # pipeline.<step> = the step's run id, on the pipeline run
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
NONE_LISTED = "none"  # the value of a list tag (failed/skipped checks) with nothing in it

# --- metric and param prefixes ----------------------------------------------------------
PATCH_PREFIX = "patch."  # per-patch statistics aggregates: patch.amp.var_zero_mean, …
GT_PREFIX = "gt."  # ground-truth scores of an infer run: gt.amp.ssim, …
FLAT_SUFFIX = "_flat"  # the same score of a flat guess: gt.amp.ssim_flat
CANVAS_PREFIX = "canvas."  # torch-vs-tf canvas scores of a compare run
THRESHOLD_PREFIX = "threshold."  # a compare run's thresholds, as params
RESOLVED_PREFIX = "resolved."  # a pipeline run's preset sizes after overrides, as params

# --- the model registry -----------------------------------------------------------------
PARITY_PASSED_ALIAS = "parity-passed"
# Where `ptyparity import ptychopinn` registers an imported model (trained in TensorFlow upstream).
PTYCHOPINN_MODEL_NAME = "ptychopinn-tensorflow"


def registered_model_name(backend):
    """The registered model a backend's bundles go to: ``ptyparity-<backend>``."""
    return f"ptyparity-{backend}"


# --- process environment ----------------------------------------------------------------
# A pipeline step runs as a child process: it nests its run under this parent run id...
PARENT_RUN_ID_ENV = "PTYPARITY_PARENT_RUN_ID"
# ...and writes the id of the run it opened into the file this names, for the parent to read.
RUN_ID_FILE_ENV = "PTYPARITY_RUN_ID_FILE"

# --- the parity matrix (ptyparity matrix) ------------------------------------------------
# One parent run of kind "matrix", one nested child of kind "matrix_cell" per cell.
KIND_MATRIX = "matrix"
KIND_MATRIX_CELL = "matrix_cell"
MATRIX_SUMMARY = "matrix/summary.json"
MATRIX_TABLE = "matrix/table.html"  # cells x taps, coloured by error / tolerance, sortable
MATRIX_HEATMAP = "matrix/heatmap.png"
PARITY_FAILED_CELLS = "parity.failed_cells"  # on the parent: the failed cell ids, or NONE_LISTED
TAG_MATRIX_CELL = "ptyparity.matrix_cell"  # on a child: its cell id
PARITY_FIRST_DIVERGENT_COMPARISON = "parity.first_divergent_comparison"  # on a child
TRAJECTORY_PREFIX = "trajectory."  # a child's trajectory.error, .floor, .tolerance metrics
