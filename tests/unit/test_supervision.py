"""When `tracker up` restarts a dead component, how long it waits, and when it gives up."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tracker.cli.supervision import FailureHistory, GiveUp, Restart, RestartPolicy, Supervisor
from tracker.errors import ConfigError
from tracker.settings import Settings

POLICY = RestartPolicy(
    max_restarts=4,
    window_seconds=300.0,
    backoff_seconds=1.0,
    max_backoff_seconds=10.0,
    stable_seconds=60.0,
)


def crash_loop(policy: RestartPolicy, uptimes: list[float]) -> list[Restart | GiveUp]:
    """The decisions for runs of the given lengths, each restarted after the delay asked for,
    up to the first give-up."""
    history = FailureHistory(policy)
    decisions: list[Restart | GiveUp] = []
    now = 0.0
    for uptime in uptimes:
        decision = history.failed(now, now + uptime)
        decisions.append(decision)
        if isinstance(decision, GiveUp):
            break
        now += uptime + decision.delay
    return decisions


def test_quick_crashes_back_off_doubling_up_to_the_cap_then_give_up() -> None:
    assert crash_loop(POLICY, [2.0] * 5) == [
        Restart(1.0, 1),
        Restart(2.0, 2),
        Restart(4.0, 3),
        Restart(8.0, 4),
        GiveUp(5),
    ]
    capped = RestartPolicy(max_restarts=10, backoff_seconds=3.0, max_backoff_seconds=10.0)
    assert [d.delay for d in crash_loop(capped, [1.0] * 4) if isinstance(d, Restart)] == [
        3.0,
        6.0,
        10.0,
        10.0,
    ]


def test_a_run_that_stayed_up_long_enough_starts_the_count_afresh() -> None:
    decisions = crash_loop(POLICY, [2.0, 2.0, 2.0, 60.0, 2.0])
    assert decisions[2] == Restart(4.0, 3)
    assert decisions[3] == Restart(1.0, 1)  # up a minute: its failure is the first again
    assert decisions[4] == Restart(2.0, 2)


def test_failures_older_than_the_window_no_longer_count() -> None:
    policy = RestartPolicy(
        max_restarts=2, window_seconds=100.0, backoff_seconds=1.0, stable_seconds=1000.0
    )
    history = FailureHistory(policy)
    assert history.failed(0.0, 10.0) == Restart(1.0, 1)
    assert history.failed(11.0, 50.0) == Restart(2.0, 2)
    # Neither stable nor close: the first failure (at 10) is more than 100 s before this one.
    assert history.failed(52.0, 115.0) == Restart(2.0, 2)
    assert history.failed(117.0, 120.0) == GiveUp(3)


def test_no_restarts_allowed_means_the_first_failure_gives_up() -> None:
    assert crash_loop(RestartPolicy(max_restarts=0), [5.0]) == [GiveUp(1)]


_policies = st.builds(
    RestartPolicy,
    max_restarts=st.integers(0, 8),
    window_seconds=st.floats(1.0, 1000.0),
    backoff_seconds=st.floats(0.1, 10.0),
    max_backoff_seconds=st.floats(10.0, 100.0),
    stable_seconds=st.floats(1.0, 500.0),
)


@settings(max_examples=300, deadline=None)
@given(policy=_policies, uptimes=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=30))
def test_any_crash_history_gets_a_bounded_answer(
    policy: RestartPolicy, uptimes: list[float]
) -> None:
    for decision in crash_loop(policy, uptimes):
        if isinstance(decision, Restart):
            assert policy.backoff_seconds <= decision.delay <= policy.max_backoff_seconds
            assert 1 <= decision.failures <= policy.max_restarts
        else:
            assert decision.failures == policy.max_restarts + 1


@settings(max_examples=200, deadline=None)
@given(policy=_policies, uptimes=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=12))
def test_a_stable_run_forgets_everything_before_it(
    policy: RestartPolicy, uptimes: list[float]
) -> None:
    """Whatever came before (short of giving up), a run that stayed up is a first failure."""
    assume(all(isinstance(d, Restart) for d in crash_loop(policy, uptimes)))
    stable = [*uptimes, policy.stable_seconds + 1.0]
    last = crash_loop(policy, stable)[-1]
    expected = crash_loop(policy, [policy.stable_seconds + 1.0])[-1]
    assert last == expected


@settings(max_examples=200, deadline=None)
@given(policy=_policies, count=st.integers(1, 20))
def test_a_crash_loop_within_the_window_waits_longer_each_time_then_gives_up(
    policy: RestartPolicy, count: int
) -> None:
    policy = replace(policy, window_seconds=1e6)
    decisions = crash_loop(policy, [policy.stable_seconds / 2] * count)
    restarts = [d for d in decisions if isinstance(d, Restart)]
    assert [d.delay for d in restarts] == sorted(d.delay for d in restarts)
    assert [d.failures for d in decisions] == list(range(1, len(decisions) + 1))
    if count > policy.max_restarts:
        assert decisions[-1] == GiveUp(policy.max_restarts + 1)
    else:
        assert len(restarts) == count


def test_the_policy_reads_its_settings() -> None:
    policy = RestartPolicy.from_settings(
        Settings.from_env(
            {
                "TRACKER_SUPERVISOR_MAX_RESTARTS": "3",
                "TRACKER_SUPERVISOR_WINDOW_SECONDS": "120",
                "TRACKER_SUPERVISOR_BACKOFF_SECONDS": "0.5",
                "TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS": "20",
                "TRACKER_SUPERVISOR_STABLE_SECONDS": "45",
            }
        )
    )
    assert policy == RestartPolicy(3, 120.0, 0.5, 20.0, 45.0)
    assert RestartPolicy.from_settings(Settings.from_env({})) == RestartPolicy()
    with pytest.raises(ConfigError, match="TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS"):
        Settings.from_env(
            {
                "TRACKER_SUPERVISOR_BACKOFF_SECONDS": "10",
                "TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS": "5",
            }
        )


@dataclass
class FakeComponent:
    """A component whose exits the test decides."""

    name: str
    pid: int | None = 100
    code: int | None = None
    starts: int = 0
    refuse_start: bool = False
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        if self.refuse_start:
            raise OSError("port in use")
        self.starts += 1
        self.code = None
        self.pid = 100 + self.starts
        self.pids.append(self.pid)

    def exit_code(self) -> int | None:
        return self.code


def test_the_supervisor_restarts_only_the_dead_component_after_its_delay() -> None:
    supervisor = Supervisor(POLICY)
    worker, beacon = FakeComponent("worker"), FakeComponent("beacon")
    supervisor.watch(worker, 0.0)
    supervisor.watch(beacon, 0.0)
    worker.code = -9
    assert supervisor.tick(5.0)
    assert supervisor.waiting() == ["worker"]
    assert supervisor.tick(5.5) and worker.starts == 0  # the first delay is 1 s
    assert supervisor.tick(6.0) and worker.starts == 1
    assert supervisor.waiting() == [] and beacon.starts == 0


def test_the_supervisor_gives_up_on_a_component_that_keeps_failing() -> None:
    supervisor = Supervisor(POLICY)
    worker = FakeComponent("worker")
    supervisor.watch(worker, 0.0)
    now = 0.0
    for _ in range(POLICY.max_restarts):
        worker.code = 1
        assert supervisor.tick(now)
        now += 10.0  # past any delay
        assert supervisor.tick(now)
    worker.code = 1
    assert not supervisor.tick(now + 1.0)
    assert supervisor.gave_up is worker
    assert worker.starts == POLICY.max_restarts


def test_a_component_that_cannot_even_start_counts_as_failing() -> None:
    supervisor = Supervisor(RestartPolicy(max_restarts=2, backoff_seconds=1.0))
    broker = FakeComponent("kafka", refuse_start=True)
    supervisor.watch(broker, 0.0)
    broker.code = -9
    assert supervisor.tick(1.0)
    assert supervisor.tick(2.0)  # start refused: second failure, wait 2 s
    assert supervisor.waiting() == ["kafka"]
    assert not supervisor.tick(4.0)  # refused again: third failure, more than 2 restarts
    assert supervisor.gave_up is broker
