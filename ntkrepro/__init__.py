"""ntkrepro: reproductions of empirical studies of the neural tangent kernel.

Importing the package first applies :mod:`ntkrepro.compat`, which lets
neural-tangents 0.6.5 run on current JAX without TensorFlow, so that user code can
write ``import ntkrepro`` and then ``import neural_tangents as nt``.
"""

from ntkrepro import compat as compat  # noqa: I001  (must run before neural_tangents)
from ntkrepro.config import ParameterError
from ntkrepro.results import Run, start

__version__ = "0.1.0"

__all__ = ["ParameterError", "Run", "start", "__version__", "compat"]
