"""Shared knobs and the tally of the reliability suite (crashes, faults, hostile input).

    RELIABILITY_SEED   seed of every random choice (default 20261122; printed in the summary)
    RELIABILITY_FULL   1: the full matrix (`make reliability`); unset: the seeded CI subset

Tests add what they did to TALLY (crash points tried, faults injected, hostile inputs tried,
documents compared, and anything lost/duplicated/corrupted); the run ends with one summary line
per counter, which the closing notes quote.
"""

from __future__ import annotations

import os
import random
from collections import Counter

SEED = int(os.environ.get("RELIABILITY_SEED", "20261122"))
FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")

TALLY: Counter[str] = Counter()


def rng(name: str) -> random.Random:
    """A generator for one test: the same seed gives the same choices, test by test."""
    return random.Random(f"{SEED}:{name}")


def scale(ci: int, full: int) -> int:
    """How many cases to run: `ci` in the default suite, `full` under `make reliability`."""
    return full if FULL else ci
