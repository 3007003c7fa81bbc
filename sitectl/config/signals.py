"""Grid signals: limits the grid operator sets from outside (`grid_signals`).

The §14a EnWG dimming contact (`grid_signals.dimming_14a`, run by `sitectl.grid14a`) and the
OpenADR 3 VEN (`grid_signals.openadr`, `sitectl.config.openadr`, run by `sitectl.openadr`);
every such source publishes its limits to the one `sitectl.limits.LimitBoard`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sitectl.config.base import GRID, _Model
from sitectl.config.openadr import OpenAdrConfig


class Dimming14aConfig(_Model):
    """§14a EnWG dimming: the grid operator's control box switches a contact, read as a
    digital input; while it says "dim", the node gets a hard kW limit the LP shares out
    (chargers are turned down, never switched off for it)."""

    device: str = Field(
        description="The digital I/O device (from `devices`) the control box's contact is wired to."
    )
    input: str = Field(description="Its input: a name from the device's profile or `inputs`.")
    active_when: Literal["closed", "open"] = Field(
        "closed",
        description="Dimming is active while the contact is closed (the input reads on, 1), or "
        "while it is open (a normally-closed relay).",
    )
    controllable_devices: int = Field(
        1,
        ge=1,
        le=10000,
        description="Controllable devices (SteuVE) behind sitectl as their EMS: the limit is "
        "this many times 4.2 kW, scaled by the simultaneity factor of BNetzA BK6-22-300.",
    )
    limit_kw: float | None = Field(
        None,
        gt=0,
        description="The dimming limit in kW instead of the formula (a value agreed with the "
        "grid operator, e.g. one that includes the building's own load).",
    )
    node: str = Field(
        GRID,
        description=f"The node the limit applies to: '{GRID}' (everything behind the connection, "
        "the building's load included) or the circuit that feeds the controllable devices.",
    )
    hold_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="Keep the limit this long after the contact releases (a bouncing relay, or "
        "a grid operator's minimum duration).",
    )
    unknown_after_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="An input that cannot be read for this long counts as active (unknown is "
        "the worst case for the breaker) and raises the alarm dimming_input_unknown.",
    )

    @property
    def dimming_kw(self) -> float:
        """The limit while dimming: `limit_kw`, else the §14a minimum for the devices."""
        from sitectl.grid14a import minimum_kw  # the rule lives with the source

        return self.limit_kw if self.limit_kw is not None else minimum_kw(self.controllable_devices)


class GridSignalsConfig(_Model):
    """Signals from the grid operator that limit the site."""

    dimming_14a: Dimming14aConfig | None = Field(
        None, description="§14a EnWG dimming contact (Germany); off when absent."
    )
    openadr: OpenAdrConfig = Field(
        default_factory=OpenAdrConfig,
        description="The grid operator's OpenADR 3 VTN: import limits, prices, reports.",
    )
