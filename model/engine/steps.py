"""Work cut into steps: a generator that yields between steps (the model worker runs other conversations'
steps there) and returns its result."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Every step at once, for a caller with nobody to share the model with; the generator's result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
