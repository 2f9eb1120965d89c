"""Bucketing of sizes that vary per call (sequence lengths, token counts), so caches do not grow per length.

A bucket is the next power of two above 16 (exact below), refined by every threshold that a policy
condition or a kernel constraint compares against: two sizes share a bucket only when every rule and
limit treats them the same, so a decision cached for a bucket is right for all of its members.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable


class Bucketer:
    __slots__ = ("_bounds",)

    def __init__(self, thresholds: Iterable[float] = ()):
        # A size n is compared as "n > t" for each boundary t; store t as sorted, unique ints.
        self._bounds: tuple[float, ...] = tuple(sorted(set(thresholds)))

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def __call__(self, n: int) -> int:
        if n <= 16:
            base = n
        else:
            base = 1 << (n - 1).bit_length()
        if self._bounds:
            return (base << 8) | bisect_left(self._bounds, n)
        return base << 8

    @staticmethod
    def boundaries_for(values: Iterable[float]) -> list[float]:
        """Split points that separate every size on either side of each value, whatever the operator
        (>, >=, <, <=, ==, !=) compares with it."""
        out: list[float] = []
        for v in values:
            out.extend((v - 1, v))
        return out
