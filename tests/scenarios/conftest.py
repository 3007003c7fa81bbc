"""Scenario tests: a simulated site (sitectl.sim.site) judged by what flows and what is charged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sitectl.sim.site import RAMP_S, Site, scenario_config, start_site

__all__ = ["RAMP_S", "scenario_config"]


@pytest.fixture
async def make_site() -> AsyncIterator[Callable[..., Any]]:
    sites: list[Site] = []

    async def make(*args: Any, **kwargs: Any) -> Site:
        site = await start_site(*args, **kwargs)
        sites.append(site)
        return site

    yield make
    for site in sites:
        await site.stop()
