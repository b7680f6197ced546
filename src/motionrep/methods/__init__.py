"""Pre-training methods and their registry (``get_method(name)``); see :mod:`motionrep.methods.base`."""

from motionrep.methods.base import Method, available_methods, get_method, register_method

__all__ = ["Method", "available_methods", "get_method", "register_method"]
