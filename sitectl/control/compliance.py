"""Does each charger draw within its limit? The measured side of the closed loop.

A charger drawing more than the highest limit in force during ``compliance_grace_s`` (plus
``compliance_tolerance_a``) for longer than the grace is non-compliant: budgeted at its maximum
until it draws within its limit again, with the ``charger_noncompliant`` alarm. On the way, a
single-connector charger's vehicle teaches its own maximum (`ChargerMemory.learn_ev`), and a
connector resumed from a pause that still draws nothing after ``resume_check_s`` raises the
``resume_failed`` info alarm. What a charger *says* it applies is `sitectl.control.applied`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sitectl.config import ChargerConfig, ControlConfig
from sitectl.control.draw import Draw
from sitectl.control.memory import ChargerMemory
from sitectl.state import Severity, SiteState

__all__ = ["ComplianceCheck"]

log = logging.getLogger(__name__)


class ComplianceCheck:
    """Judges chargers by what they draw against the limits they accepted.

    Args:
        control: the control settings (grace, tolerance, learning and resume times).
        state: the site state (connectors, alarms).
        memory: the control loop's memory of each charger.
        chargers: the configured chargers by id.
    """

    def __init__(
        self,
        control: ControlConfig,
        state: SiteState,
        memory: Mapping[str, ChargerMemory],
        chargers: Mapping[str, ChargerConfig],
    ) -> None:
        self.control = control
        self.state = state
        self.memory = memory
        self.chargers = chargers

    def check(self, draws: Mapping[str, Mapping[int, Draw]], now_mono: float) -> None:
        """Judge every connected charger with a limit by this cycle's draws."""
        for charger_id, charger in self.state.chargers.items():
            mem = self.memory[charger_id]
            if not charger.connected or mem.commanded_a is None or mem.unavailable:
                continue
            found = draws.get(charger_id) or {}
            if not found:
                continue
            # The best estimate on its most loaded phase, summed over its connectors.
            draw = max(sum(d.est[k] for d in found.values()) for k in range(3))
            sessions = [c.session for c in charger.connectors.values() if c.session]
            configured = self.chargers[charger_id]
            if len(charger.connectors) == 1 and sessions and not mem.noncompliant:
                mem.learn_ev(
                    sessions[0].session_id,
                    draw,
                    now_mono,
                    self.control.ev_learn_s,
                    configured.max_current_a,
                    configured.min_current_a,
                )
            # Judged against the highest limit in force during the grace window: a charger has
            # the grace to follow a decrease, however often its limit changes, but not longer.
            allowed = mem.highest_limit_since(now_mono - self.control.compliance_grace_s)
            over = draw > allowed + self.control.compliance_tolerance_a
            if over:
                if mem.over_limit_since is None:
                    mem.over_limit_since = now_mono
                if (
                    not mem.noncompliant
                    and now_mono - mem.over_limit_since > self.control.compliance_grace_s
                ):
                    mem.noncompliant = True
                    charger.compliance = "noncompliant"
                    log.warning(
                        "%s draws %.1f A above its %.1f A limit: budgeted at its measured draw",
                        charger_id,
                        draw,
                        mem.commanded_a,
                    )
                    self.state.raise_alarm(
                        "charger_noncompliant",
                        charger_id,
                        Severity.WARNING,
                        f"draws {draw:.1f} A with a limit of {mem.commanded_a:.1f} A",
                    )
            else:
                mem.over_limit_since = None
                if mem.noncompliant:
                    mem.noncompliant = False
                    charger.compliance = "ok"
                    self.state.clear_alarm("charger_noncompliant", charger_id)
            for connector_id, resumed in list(mem.resumed_at.items()):
                if now_mono - resumed < self.control.resume_check_s:
                    continue
                del mem.resumed_at[connector_id]
                connector = charger.connectors.get(connector_id)
                if (
                    connector is not None
                    and connector.session is not None
                    and connector.current_a is not None
                    and max(a or 0.0 for a in connector.current_a) < 1.0
                ):
                    self.state.raise_alarm(
                        "resume_failed",
                        f"{charger_id}/{connector_id}",
                        Severity.INFO,
                        f"resumed {self.control.resume_check_s:g} s ago but draws nothing "
                        "(vehicle asleep?)",
                    )
