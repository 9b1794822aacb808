"""Alert state machine: inactive -> pending -> firing -> resolved, one instance per rule.

The monitor computes each rule's value once a tick and hands the values here; this module only
decides states and tells its listeners about changes. It knows no metrics and no I/O.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from monitoring.config import AlertRule

log = logging.getLogger("monitoring.alerts")

AlertState = Literal["inactive", "pending", "firing"]
Transition = Literal["pending", "firing", "resolved", "cancelled"]

_BELOW_KINDS = frozenset({"healthy_workers_below", "cache_hit_rate_below"})


def condition_holds(rule: AlertRule, value: float) -> bool:
    if rule.kind in _BELOW_KINDS:
        return value < rule.threshold
    return value > rule.threshold


@dataclass(frozen=True)
class AlertEvent:
    """A change of one alert's state, as logged, kept in /alerts and posted to the webhook."""

    alert: str
    transition: Transition
    severity: str
    summary: str
    value: float | None
    threshold: float
    at: float  # wall-clock seconds
    active_since: float | None  # wall-clock seconds the condition started holding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Instance:
    rule: AlertRule
    state: AlertState = "inactive"
    since: float = 0.0  # monotonic time the condition started holding
    since_wall: float | None = None
    fired_wall: float | None = None
    value: float | None = None


class AlertManager:
    def __init__(
        self,
        rules: Iterable[AlertRule],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        listeners: Iterable[Callable[[AlertEvent], None]] = (),
        keep_resolved: int = 50,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._instances = {rule.name: _Instance(rule) for rule in rules if rule.enabled}
        self._listeners = list(listeners)
        self._resolved: deque[dict[str, Any]] = deque(maxlen=keep_resolved)

    @property
    def rules(self) -> list[AlertRule]:
        return [instance.rule for instance in self._instances.values()]

    def add_listener(self, listener: Callable[[AlertEvent], None]) -> None:
        self._listeners.append(listener)

    def evaluate(self, values: Mapping[str, float | None]) -> list[AlertEvent]:
        """Advance every rule with its current value. None (too little data in the window) counts
        as the condition not holding, as in Prometheus where an empty result resolves an alert:
        a firing alert resolves when traffic stops, a pending one is cancelled."""
        now, wall = self._clock(), self._wall_clock()
        events: list[AlertEvent] = []
        for name, instance in self._instances.items():
            value = values.get(name)
            instance.value = value
            holds = value is not None and condition_holds(instance.rule, value)
            transition = self._advance(instance, holds, now, wall)
            if transition is not None:
                events.append(self._event(instance, transition, wall))
        for event in events:
            self._publish(event)
        return events

    def _advance(
        self, instance: _Instance, holds: bool, now: float, wall: float
    ) -> Transition | None:
        if instance.state == "inactive":
            if not holds:
                return None
            instance.state, instance.since, instance.since_wall = "pending", now, wall
            if instance.rule.for_s > 0:
                return "pending"
        if instance.state == "pending":
            if not holds:
                instance.state = "inactive"
                return "cancelled"
            if now - instance.since >= instance.rule.for_s:
                instance.state, instance.fired_wall = "firing", wall
                return "firing"
            return None
        if not holds:  # firing
            instance.state = "inactive"
            return "resolved"
        return None

    def _event(self, instance: _Instance, transition: Transition, wall: float) -> AlertEvent:
        rule = instance.rule
        event = AlertEvent(
            alert=rule.name,
            transition=transition,
            severity=rule.severity,
            summary=rule.summary,
            value=instance.value,
            threshold=rule.threshold,
            at=wall,
            active_since=instance.since_wall,
        )
        if transition == "resolved":
            self._resolved.appendleft(
                {**self._describe(instance), "fired_at": instance.fired_wall, "resolved_at": wall}
            )
        return event

    def _publish(self, event: AlertEvent) -> None:
        level = logging.WARNING if event.transition in ("firing", "resolved") else logging.INFO
        log.log(
            level,
            "alert %s %s: value %s, threshold %s (%s)",
            event.alert,
            event.transition,
            _fmt(event.value),
            _fmt(event.threshold),
            event.summary,
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken sink must not stop alert evaluation
                log.exception("alert listener %r failed", listener)

    @staticmethod
    def _describe(instance: _Instance) -> dict[str, Any]:
        rule = instance.rule
        return {
            "alert": rule.name,
            "kind": rule.kind,
            "severity": rule.severity,
            "summary": rule.summary,
            "model": rule.model,
            "value": instance.value,
            "threshold": rule.threshold,
            "window_s": rule.window_s,
            "for_s": rule.for_s,
            "active_since": instance.since_wall,
        }

    def state(self, name: str) -> AlertState:
        return self._instances[name].state

    def states(self) -> dict[str, AlertState]:
        return {name: instance.state for name, instance in self._instances.items()}

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """The /alerts body: firing and pending alerts now, and the recently resolved ones."""
        firing, pending = [], []
        for instance in self._instances.values():
            if instance.state == "firing":
                firing.append({**self._describe(instance), "fired_at": instance.fired_wall})
            elif instance.state == "pending":
                pending.append(self._describe(instance))
        return {"firing": firing, "pending": pending, "resolved": list(self._resolved)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"
