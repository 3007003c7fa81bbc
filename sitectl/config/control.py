"""The control loop's settings, and what it plans for: the tariff (the fleet: `fleet`)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from sitectl.config.base import _Model, _parse_time_of_day


class ObjectiveWeights(_Model):
    """Relative weights of the optimizer's objective terms (see optimizer docs)."""

    energy: float = Field(1.0, ge=0, description="Delivering energy by departure (shortfall).")
    cost: float = Field(1.0, ge=0)
    peak: float = Field(1.0, ge=0)
    early: float = Field(1.0, ge=0, description="Charging sooner rather than later.")
    fairness: float = Field(1.0, ge=0)


class ControlConfig(_Model):
    """The control loop: how often, how far ahead, how much solver time, how cautious."""

    period_s: float = Field(5.0, ge=0.5, le=300)
    step_s: int = Field(900, ge=60, le=3600, description="Planning step length.")
    horizon_steps: int = Field(
        96, ge=1, le=2016, description="Horizon length, in steps of step_s (96 × 900 s: 24 h)."
    )
    near_horizon_s: int = Field(
        7200,
        ge=0,
        description="How far ahead the plan keeps steps of step_s; beyond it, steps of "
        "far_step_s. Only the first step is dispatched and the plan is solved again every "
        "period, so the far plan only needs to say what is still to come (issue #18: 24 h "
        "at 15 min then 1 h is 30 steps instead of 96, a third of the LP).",
    )
    far_step_s: int = Field(
        3600,
        ge=60,
        le=14400,
        description="Planning step length beyond near_horizon_s; step_s or less keeps one "
        "step length over the whole horizon.",
    )
    solver_budget_s: float = Field(1.0, gt=0, le=60)
    weights: ObjectiveWeights = Field(default_factory=ObjectiveWeights)
    deadband_a: float = Field(1.0, ge=0, description="Skip increases smaller than this.")
    profile_validity_s: float = Field(
        30.0, gt=0, description="Duration of dynamic limits; the charger falls back after it."
    )
    low_limit_validity_s: float = Field(
        3600.0,
        gt=0,
        description="Duration of a dynamic limit at or below the charger's fail-safe (a pause, a "
        "low share): a charger holding it after sitectl is gone draws no more than its fail-safe, "
        "so it is written again only this often (flash wear, rate limits). At most "
        "profile_validity_s: every limit is refreshed as often.",
    )
    min_pause_s: float = Field(60.0, ge=0)
    min_charge_s: float = Field(60.0, ge=0)
    meter_grace_s: float = Field(15.0, ge=0)
    failsafe_hold_s: float = Field(300.0, ge=0)
    good_readings_to_recover: int = Field(5, ge=1)
    compliance_tolerance_a: float = Field(2.0, ge=0)
    compliance_grace_s: float = Field(60.0, ge=0)
    ev_measurement_max_age_s: float = Field(
        30.0, gt=0, description="A charger's MeterValues older than this are not trusted."
    )
    non_ev_hold_s: float = Field(
        40.0,
        ge=0,
        description="A non-EV load estimate is held this long before it may fall "
        "(covers the skew between meter readings and chargers' MeterValues). At least "
        "max(ev_measurement_max_age_s, meter_grace_s) + period_s is used, whatever is set.",
    )
    resume_check_s: float = Field(
        60.0, gt=0, description="A resumed session drawing nothing after this is flagged."
    )
    ramp_down_s: float = Field(
        6.0,
        ge=0,
        description="How long a charger may take to bring its draw down to a lowered limit "
        "(IEC 61851-1 gives the vehicle 5 s; some chargers take 6-7 s): the headroom it frees "
        "is given to others only after this, or once a measurement shows the reduction.",
    )
    dispatch_timeout_s: float = Field(
        3.0, gt=0, description="How long decreases may take to be accepted before increases."
    )
    fallback_alarm_after: int = Field(3, ge=1, description="Consecutive fallback cycles.")
    ev_learn_s: float = Field(
        60.0,
        ge=0,
        description="Learn a vehicle's own maximum current after it draws well "
        "below its limit this long (OCPP 1.6 does not report it); 0 turns learning off.",
    )
    default_energy_kwh: float = Field(60.0, ge=0)
    default_departure: str = Field("06:00", description="Local time vehicles leave by default.")
    soft_limit_penalty: float = Field(
        0.75,
        gt=0,
        le=64,
        description="What a kWh over a soft grid limit (an OpenADR capacity request, a "
        "congestion band) costs the plan, as a share of what a kWh a vehicle misses at its "
        "departure costs it (priority 0). Between 0.5 and 1 a soft limit is exceeded only to "
        "deliver energy a vehicle leaving within the horizon would otherwise miss, never to "
        "save on price; above 1 only for higher priorities (each level weighs 4x). Hard "
        "limits are never exceeded.",
    )
    limit_history_days: int = Field(
        180,
        ge=1,
        le=3650,
        description="How long the record of limit interventions (a window starting, changing "
        "or ending) is kept in the store.",
    )

    @field_validator("default_departure")
    @classmethod
    def _departure(cls, value: str) -> str:
        _parse_time_of_day(value)
        return value

    @property
    def required_non_ev_hold_s(self) -> float:
        """The shortest hold that covers its own rule (issue #16.6).

        A paused vehicle's last report stays "fresh" for ``ev_measurement_max_age_s`` and a meter
        reading for ``meter_grace_s``: a shorter hold lets the non-EV estimate fall while the
        vehicle's draw is still subtracted, and the connection is overloaded when it resumes.
        """
        return max(self.ev_measurement_max_age_s, self.meter_grace_s) + self.period_s

    @property
    def effective_non_ev_hold_s(self) -> float:
        """The hold the control loop uses: the configured one, never below the required."""
        return max(self.non_ev_hold_s, self.required_non_ev_hold_s)

    def step_durations_s(self) -> tuple[float, ...]:
        """The planning grid: step_s up to near_horizon_s, then far_step_s to the end of the
        horizon (``horizon_steps × step_s``; the last step may be shorter)."""
        horizon = self.horizon_steps * self.step_s
        if self.far_step_s <= self.step_s:
            return (float(self.step_s),) * self.horizon_steps
        near = min(self.horizon_steps, max(1, -(-self.near_horizon_s // self.step_s)))
        out = [float(self.step_s)] * near
        covered = near * self.step_s
        while covered < horizon:
            out.append(float(min(self.far_step_s, horizon - covered)))
            covered += self.far_step_s
        return tuple(out)

    @model_validator(mode="after")
    def _periods(self) -> ControlConfig:
        if self.profile_validity_s < 2 * self.period_s:
            raise ValueError(
                f"profile_validity_s ({self.profile_validity_s:g} s) must be at least two "
                f"control periods ({2 * self.period_s:g} s) or limits lapse between refreshes"
            )
        return self


class TariffPeriod(_Model):
    start: str = Field(description="Local time the price starts, 'HH:MM'.")
    eur_per_kwh: float

    _start = field_validator("start")(classmethod(lambda cls, v: (_parse_time_of_day(v), v)[1]))


class TariffConfig(_Model):
    """Optional energy tariff (time of use) and demand charge."""

    periods: list[TariffPeriod] = Field(default_factory=list)
    demand_charge_eur_per_kw: float = Field(0.0, ge=0)
