"""fitdeck's Keras side: `from client_callback import LiveMonitor`.

Importing the package only checks that Keras is there; Keras itself (and its
backend) loads when `LiveMonitor` is first used, so `fitdeck sync` starts fast.
"""

from __future__ import annotations

import importlib.util
from typing import Any

if importlib.util.find_spec("keras") is None:
    raise ImportError(
        "client_callback needs Keras 3 with a backend, which is not installed: "
        "pip install 'fitdeck[tf]' (TensorFlow), or install keras with JAX or PyTorch."
    )

from client_callback.stream import FitdeckWarning

__all__ = ["FitdeckWarning", "LiveMonitor"]


def __getattr__(name: str) -> Any:
    if name == "LiveMonitor":
        from client_callback.monitor import LiveMonitor

        return LiveMonitor
    raise AttributeError(f"module 'client_callback' has no attribute {name!r}")
