"""The MLflow pyfunc model of a ptyparity bundle, logged as *models from code*.

MLflow copies this file into the model directory and runs it at load time, so
nothing is pickled: the model's only state is the bundle directory (``weights.npz``
+ ``bundle.json``) it receives as the artifact ``bundle``. Part of the tracking
layer (it is the one other place that imports mlflow).

``predict`` takes a dict with ``diff3d (M, N, N)``, ``xcoords (M,)``, ``ycoords (M,)``
(and optionally ``objectGuess`` to stitch on its grid) and returns a dict with the
stitched ``amplitude``, ``phase`` and ``count`` canvases. Pass
``params={"backend": "tensorflow"}`` to run the other backend.
"""

import mlflow.models
import mlflow.pyfunc


class BundleModel(mlflow.pyfunc.PythonModel):
    # The input is a dict of arrays, a form MLflow's type-hint validation has no type for
    # (MLflow 3.17 takes `list[...]`, or pd.DataFrame / np.ndarray unvalidated; a
    # `dict[...]` hint is "not supported" and fails signature inference at log time).
    # Without a hint MLflow warns "Add type hints to the `predict` method" every time it
    # loads this file; this is MLflow's own switch (its ChatModel/ChatAgent set it) for
    # a model that validates its input itself, as predict does (validate_arrays).
    _skip_type_hint_validation = True

    def load_context(self, context):
        from ptyparity.bundle import load_dir
        from ptyparity.inference import Reconstructor

        self.reconstructor = Reconstructor(load_dir(context.artifacts["bundle"]), source="pyfunc")

    def predict(self, context, model_input, params=None):
        import numpy as np

        from ptyparity.data import validate_arrays

        arrays = {k: np.asarray(v) for k, v in dict(model_input).items()}
        arrays.setdefault("probeGuess", self.reconstructor.bundle.probe)
        data = validate_arrays(arrays, source="pyfunc input")
        backend = (params or {}).get("backend")
        rec = self.reconstructor.reconstruct(data, backend=backend)
        return {"amplitude": np.abs(rec.canvas), "phase": np.angle(rec.canvas), "count": rec.count}


mlflow.models.set_model(BundleModel())
