"""The fault plan of a simulator and the seeded, thread-safe choice of each request's fault.

It decides what happens to a request; it never touches a socket (the server acts on the
decision). The same plan and seed always give the same sequence of faults.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class FaultPlanError(ValueError):
    """A fault plan with unknown keys or out-of-range values; the message names each problem."""


class FaultPlan(BaseModel):
    """What a simulator does wrong. Counted faults (burst_5xx, rate_limited, timeouts,
    reset_connections) hold how many requests are still to be hit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(0, ge=0)
    error_rate: float = Field(0, ge=0, le=1)
    error_status: int = Field(500, ge=400, le=599)
    burst_5xx: int = Field(0, ge=0)
    rate_limited: int = Field(0, ge=0)
    # HTTP's Retry-After is whole seconds; a fraction (sent as e.g. "0.1") keeps tests fast.
    retry_after_seconds: float = Field(1, ge=0)
    timeouts: int = Field(0, ge=0)
    timeout_seconds: float = Field(30, gt=0)
    reset_connections: int = Field(0, ge=0)
    # A one-shot command, not a state: the server acts on it when set and stores 0.
    refuse_for_seconds: float = Field(0, ge=0)
    wrong_auth: bool = False
    seed: int = 0


def validated_plan(values: dict[str, Any]) -> FaultPlan:
    try:
        return FaultPlan.model_validate(values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise FaultPlanError("; ".join(problems)) from None


@dataclass(frozen=True)
class InjectedFault:
    """What to do instead of answering normally.

    kind "status": answer `status` with `headers`; "reset": close the connection at once with no
    answer; "timeout": hold the connection `hang_seconds`, then close it with no answer.
    """

    kind: Literal["status", "reset", "timeout"]
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    hang_seconds: float = 0.0


@dataclass(frozen=True)
class FaultDecision:
    latency_seconds: float
    fault: InjectedFault | None


class FaultInjector:
    """Holds the current plan; `decide()` draws the fault of one request and uses up counters.

    Counted faults are used in this order: reset, timeout, 429, 503; then error_rate draws.
    """

    def __init__(self, seed: int = 0) -> None:
        self._default_seed = seed
        self._lock = threading.Lock()
        self._plan = FaultPlan(seed=seed)
        self._random = random.Random(seed)

    def plan(self) -> FaultPlan:
        with self._lock:
            return self._plan

    def update(self, **changes: Any) -> FaultPlan:
        """Merge `changes` into the plan (other keys keep their values) and restart the random
        sequence from the plan's seed, so a repeated update repeats the same statuses.

        Returns the plan as asked, refuse_for_seconds included; the stored plan keeps 0 there.
        """
        with self._lock:
            plan = validated_plan({**self._plan.model_dump(), **changes})
            self._plan = plan.model_copy(update={"refuse_for_seconds": 0})
            self._random = random.Random(plan.seed)
            return plan

    def clear(self) -> FaultPlan:
        with self._lock:
            self._plan = FaultPlan(seed=self._default_seed)
            self._random = random.Random(self._default_seed)
            return self._plan

    def wrong_auth(self) -> bool:
        with self._lock:
            return self._plan.wrong_auth

    def decide(self) -> FaultDecision:
        with self._lock:
            plan = self._plan
            fault = self._take_counted_fault(plan)
            # Drawn on every request while error_rate is set, so a seed fixes the whole sequence.
            drawn_error = plan.error_rate > 0 and self._random.random() < plan.error_rate
            if fault is None and drawn_error:
                fault = InjectedFault("status", status=plan.error_status)
            return FaultDecision(plan.latency_ms / 1000.0, fault)

    def _take_counted_fault(self, plan: FaultPlan) -> InjectedFault | None:
        if plan.reset_connections:
            self._plan = plan.model_copy(update={"reset_connections": plan.reset_connections - 1})
            return InjectedFault("reset")
        if plan.timeouts:
            self._plan = plan.model_copy(update={"timeouts": plan.timeouts - 1})
            return InjectedFault("timeout", hang_seconds=plan.timeout_seconds)
        if plan.rate_limited:
            self._plan = plan.model_copy(update={"rate_limited": plan.rate_limited - 1})
            retry_after = (("Retry-After", f"{plan.retry_after_seconds:g}"),)
            return InjectedFault("status", status=429, headers=retry_after)
        if plan.burst_5xx:
            self._plan = plan.model_copy(update={"burst_5xx": plan.burst_5xx - 1})
            return InjectedFault("status", status=503)
        return None
