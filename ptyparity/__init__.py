"""ptyparity: make the PyTorch and TensorFlow PtychoPINN backends provably agree.

The top-level package imports nothing heavy; NumPy-only modules (``physics``,
``grouping``, ``simulate``, ``stitching``, ``metrics``, ``stats``) are imported on
demand, and the frameworks (torch, tensorflow, mlflow) only inside the functions
that need them.
"""

from ptyparity.errors import PtyparityError

__version__ = "0.1.0"

__all__ = ["PtyparityError", "__version__"]
