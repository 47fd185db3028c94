"""Capped exponential backoff with jitter (shared by redialing analyzers and the LIS relay)."""

from __future__ import annotations

import random

_RNG = random.Random()


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): half fixed, half random ("equal jitter").

    The fixed half keeps a retry from firing at once; the random half spreads many clients apart.
    """
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 32))
    source = rng if rng is not None else _RNG
    return ceiling / 2 + source.random() * ceiling / 2
