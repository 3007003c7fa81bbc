"""The API's numbers: one precision per unit, applied where the response models are built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "PRECISION",
    "Amps",
    "KilowattHours",
    "Kilowatts",
    "Milliseconds",
    "Percent",
    "Phases",
    "WattHours",
]

#: Decimal places per unit in every response (the OpenAPI document states them too).
PRECISION = {"A": 1, "kW": 2, "kWh": 2, "Wh": 0, "ms": 1, "%": 1}


def _rounded(digits: int) -> Callable[[float], float]:
    def rounded(value: float) -> float:
        return round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0 (no "-0.0" in JSON)

    return rounded


Amps = Annotated[float, AfterValidator(_rounded(PRECISION["A"]))]
Kilowatts = Annotated[float, AfterValidator(_rounded(PRECISION["kW"]))]
KilowattHours = Annotated[float, AfterValidator(_rounded(PRECISION["kWh"]))]
WattHours = Annotated[float, AfterValidator(_rounded(PRECISION["Wh"]))]
Milliseconds = Annotated[float, AfterValidator(_rounded(PRECISION["ms"]))]
Percent = Annotated[float, AfterValidator(_rounded(PRECISION["%"]))]
Phases = tuple[Amps, Amps, Amps]
