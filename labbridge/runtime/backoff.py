"""Capped exponential backoff with jitter (shared by redialing analyzers and the LIS relay)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): half fixed, half random ("equal jitter").

    The fixed half keeps a retry from firing at once; the random half spreads many clients apart.
    """
    ceiling = min(maximum, initial * (2 ** min(attempt, 32)))
    r = (rng or random).random()
    return ceiling / 2 + r * ceiling / 2
