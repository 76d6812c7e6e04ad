"""Build heavy objects once, on first use, in the process that uses them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lazy(Generic[T]):
    """Build ``factory()`` once, on the first ``get()`` in this process; thread-safe.

    Celery's parent process imports the task modules before forking its pool: a model or CUDA context
    built there would be shared by forked children, which CUDA and TensorFlow do not survive. So
    nothing is built at import time, and :meth:`reset` forgets the object after a fork.
    """

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name = name
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    log.info("loading %s in this process", self.name)
                    self._value = self._factory()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def reset(self) -> None:
        """Forget the object (after a fork, or in tests)."""
        self._value = None


def module_getattr(module: str, namespace: dict[str, Any], factories: dict[str, Callable[[], Any]]):
    """A module ``__getattr__`` (PEP 562) that builds each of ``factories``' names on first access.

    ``__getattr__ = module_getattr(__name__, globals(), {"app": create_app})``: importing the module
    builds nothing; the first ``module.app`` (or ``from module import app``) calls ``create_app()`` once
    (thread-safe) and keeps the object in the module, where later lookups find it directly.
    """
    lock = threading.Lock()

    def __getattr__(name: str) -> Any:
        factory = factories.get(name)
        if factory is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        with lock:
            if name not in namespace:
                namespace[name] = factory()
        return namespace[name]

    return __getattr__
