"""On/off settings of the model code that a caller sets for a block of code.

The fused kernels (cnnf.fused), the C kernels (cnnf.native) and the
straight-through attack gradients (cnnf.functional) are each switched by a
scope, like torch.no_grad(): the model code takes no extra argument, and
the setting follows the thread or task that set it (a ContextVar). Some
also read an environment variable that overrides every scope.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

OFF_VALUES = ("0", "false", "no", "off")


class Switch:
    """A scoped on/off setting; `default` holds outside every scope (None: not chosen)."""

    def __init__(self, name: str, default: Optional[bool], env: Optional[str] = None):
        self._var: ContextVar[Optional[bool]] = ContextVar(name, default=default)
        self.env = env

    @contextmanager
    def scope(self, enabled: bool) -> Iterator[None]:
        token = self._var.set(enabled)
        try:
            yield
        finally:
            self._var.reset(token)

    def scoped(self) -> Optional[bool]:
        """The innermost scope's setting (the default outside every scope)."""
        return self._var.get()

    def from_env(self) -> Optional[bool]:
        """The environment variable's setting: False for 0/false/no/off, True
        for any other non-empty value, None when unset or empty."""
        value = os.environ.get(self.env, "").strip().lower() if self.env else ""
        if not value:
            return None
        return value not in OFF_VALUES
