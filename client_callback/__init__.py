"""fitdeck's Keras side: `from client_callback import LiveMonitor`."""

try:
    import keras  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "client_callback needs Keras 3 with a backend, which is not installed: "
        "pip install 'fitdeck[tf]' (TensorFlow), or install keras with JAX or PyTorch."
    ) from exc

from client_callback.monitor import LiveMonitor
from client_callback.stream import FitdeckWarning

__all__ = ["FitdeckWarning", "LiveMonitor"]
