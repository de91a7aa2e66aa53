"""When ``tracker up`` restarts a component that died, and when it gives up.

Plain Python, no processes: the runtime records each run of a component (when it started and
when it ended) and asks the policy what to do next. Delays double from the first backoff up to
the largest; failures count only within a sliding window, and a run that lasted long enough
clears the count, so a component that crashes once a day is restarted every time.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from tracker.settings import Settings

__all__ = [
    "Component",
    "FailureHistory",
    "GiveUp",
    "Restart",
    "RestartPolicy",
    "Run",
    "Supervisor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Run:
    """One life of a component, in seconds of a monotonic clock."""

    started: float
    ended: float


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the component again after ``delay`` seconds; ``failures`` counts this one."""

    delay: float
    failures: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Too many failures within the window: a person has to look."""

    failures: int


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5
    window_seconds: float = 300.0
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    stable_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(
            max_restarts=settings.supervisor_max_restarts,
            window_seconds=settings.supervisor_window_seconds,
            backoff_seconds=settings.supervisor_backoff_seconds,
            max_backoff_seconds=settings.supervisor_max_backoff_seconds,
            stable_seconds=settings.supervisor_stable_seconds,
        )

    def counted(self, runs: list[Run]) -> list[Run]:
        """The failed runs that count against the component, oldest first: from its latest
        stable run on (a stable run's own failure counts, those before it do not), and only
        those that ended within the window before the latest."""
        first = len(runs) - 1
        while first > 0 and not self._stable(runs[first]):
            first -= 1
        if first < 0:
            return []
        since = runs[-1].ended - self.window_seconds
        return [run for run in runs[first:] if run.ended > since]

    def decide(self, runs: list[Run]) -> Restart | GiveUp:
        """What to do now that the latest of ``runs`` (the component's runs, oldest first,
        each of which ended in a failure) has ended."""
        failures = len(self.counted(runs))
        if failures > self.max_restarts:
            return GiveUp(failures)
        # Exponent capped so a long history cannot overflow the float.
        delay = self.backoff_seconds * 2.0 ** min(failures - 1, 64)
        return Restart(min(delay, self.max_backoff_seconds), failures)

    def _stable(self, run: Run) -> bool:
        return run.ended - run.started >= self.stable_seconds


class FailureHistory:
    """One component's failed runs, kept only as far back as the policy looks."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._runs: deque[Run] = deque()

    def failed(self, started: float, ended: float) -> Restart | GiveUp:
        self._runs.append(Run(started, ended))
        kept = self._policy.counted(list(self._runs))
        self._runs = deque(kept)
        return self._policy.decide(kept)


class Component(Protocol):
    """Something ``tracker up`` runs: a child process, or the local broker."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None:
        """Start it without waiting for it to be ready; raise if it cannot even be started."""

    def exit_code(self) -> int | None:
        """Its exit code once it has exited; None while it runs."""


@dataclass(slots=True)
class _Watched:
    component: Component
    history: FailureHistory
    started: float
    restarts: int = 0
    restart_at: float | None = None


class Supervisor:
    """Watches components and restarts those that exit, as the policy says. The caller drives it
    with :meth:`tick` and stops the components itself, so a stop never waits out a backoff."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._watched: list[_Watched] = []
        self.gave_up: Component | None = None

    def watch(self, component: Component, started: float) -> None:
        """Follow a component that was started at ``started``."""
        self._watched.append(_Watched(component, FailureHistory(self._policy), started))

    def waiting(self) -> list[str]:
        """The components down and waiting out a backoff."""
        return [w.component.name for w in self._watched if w.restart_at is not None]

    def tick(self, now: float) -> bool:
        """Restart what is due and note what has exited. False once a component has failed too
        often: the caller should stop everything."""
        for watched in self._watched:
            if self.gave_up is not None:
                break
            if watched.restart_at is not None:
                if now >= watched.restart_at:
                    self._restart(watched, now)
                continue
            code = watched.component.exit_code()
            if code is not None:
                self._failed(watched, code, now)
        return self.gave_up is None

    def _failed(self, watched: _Watched, code: int | str, now: float) -> None:
        name = watched.component.name
        decision = watched.history.failed(watched.started, now)
        details = {
            "component": name,
            "code": code,
            "signal": _signal_name(code),
            "uptime_seconds": round(now - watched.started, 1),
            "failures": decision.failures,
            "restarts": watched.restarts,
        }
        if isinstance(decision, GiveUp):
            log.error(
                "component keeps failing; giving up",
                extra={
                    **details,
                    "max_restarts": self._policy.max_restarts,
                    "window_seconds": self._policy.window_seconds,
                },
            )
            self.gave_up = watched.component
            return
        log.warning(
            "component exited; restarting",
            extra={
                **details,
                "next_attempt": watched.restarts + 1,
                "delay_seconds": decision.delay,
            },
        )
        watched.restart_at = now + decision.delay

    def _restart(self, watched: _Watched, now: float) -> None:
        watched.restart_at = None
        watched.started = now
        watched.restarts += 1
        try:
            watched.component.start()
        except Exception as exc:  # it could not even start: one more failure
            log.warning(
                "component could not be started",
                extra={"component": watched.component.name, "error": str(exc)},
            )
            self._failed(watched, f"not started: {exc}", now)
            return
        log.info(
            "component restarted",
            extra={
                "component": watched.component.name,
                "pid": watched.component.pid,
                "restarts": watched.restarts,
            },
        )


def _signal_name(code: int | str) -> str | None:
    """Popen reports a process killed by a signal as the negative signal number."""
    if isinstance(code, int) and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return None
    return None
