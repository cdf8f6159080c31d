"""Figures rounded to what they mean, for CSV and JSON (no 368.04999999999995): percentages to 2
decimals, scores and other measured values to 6 significant digits. Infinities and NaN pass through."""

from __future__ import annotations

import math


def percent(x: float) -> float:
    """A percentage (R@K, R-sum) to 2 decimals."""
    x = float(x)
    return round(x, 2) if math.isfinite(x) else x


def sig(x: float, digits: int = 6) -> float:
    """A score, loss, rate or mAP to `digits` significant digits."""
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) and x != 0 else x


def seconds(x: float) -> float:
    """A duration in seconds, to 3 decimals."""
    return round(float(x), 3)


def csv_value(x: float) -> str:
    """A score as CSV text: 6 significant digits, empty for NaN (no score)."""
    x = float(x)
    return "" if math.isnan(x) else repr(sig(x))
