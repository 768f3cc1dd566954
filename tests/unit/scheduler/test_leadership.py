"""The active/standby state machine of several schedulers (kestream.scheduler.leadership)."""

from __future__ import annotations

from kestream.scheduler.leadership import Leadership, Role


def test_a_new_scheduler_is_an_undecided_standby() -> None:
    leadership = Leadership()
    assert leadership.role is Role.STANDBY
    assert not leadership.decided
    assert not leadership.holds(0)


def test_acquire_then_activate_makes_it_active_under_a_new_term() -> None:
    leadership = Leadership()
    term = leadership.acquire()
    assert term == 1 and leadership.role is Role.ACTIVATING and leadership.decided
    assert not leadership.holds(term)  # catching up: nothing fires yet
    assert leadership.holds_or_activating(term)  # but its activation may write
    assert leadership.activated(term)
    assert leadership.role is Role.ACTIVE and leadership.holds(term)
    assert leadership.activations == 1


def test_an_assignment_to_the_holder_changes_nothing() -> None:
    leadership = Leadership()
    term = leadership.acquire()
    assert term is not None and leadership.activated(term)
    assert leadership.acquire() is None
    assert leadership.holds(term) and leadership.term == term


def test_release_fences_every_write_of_the_old_term() -> None:
    leadership = Leadership()
    term = leadership.acquire()
    assert term is not None and leadership.activated(term)
    assert leadership.release()
    assert leadership.role is Role.STANDBY
    assert not leadership.holds(term) and not leadership.holds_or_activating(term)
    assert not leadership.release()  # a second revocation: nothing held, nothing to stop


def test_won_again_the_old_term_stays_fenced() -> None:
    leadership = Leadership()
    first = leadership.acquire()
    assert first is not None and leadership.activated(first)
    leadership.release()
    second = leadership.acquire()
    assert second == first + 1
    assert leadership.activated(second)
    assert leadership.holds(second) and not leadership.holds(first)


def test_a_release_during_activation_refuses_its_late_completion() -> None:
    leadership = Leadership()
    term = leadership.acquire()
    assert term is not None
    assert leadership.release()  # the lease went while catching up
    assert not leadership.activated(term)
    assert leadership.role is Role.STANDBY and leadership.activations == 0


def test_an_activation_of_an_older_term_is_refused() -> None:
    leadership = Leadership()
    old = leadership.acquire()
    assert old is not None
    leadership.release()
    new = leadership.acquire()
    assert new is not None
    assert not leadership.activated(old)
    assert leadership.role is Role.ACTIVATING
    assert leadership.activated(new)


def test_standby_answer_decides_without_a_term() -> None:
    leadership = Leadership()
    leadership.standby()
    assert leadership.decided and leadership.role is Role.STANDBY and leadership.term == 0


def test_only_an_assignment_after_an_earlier_answer_is_a_takeover() -> None:
    """The first assignment is a cold start; one after a standby answer, or after this
    scheduler's own earlier term, takes over from a holder that was alive."""
    cold = Leadership()
    assert cold.acquire() == 1 and not cold.takeover
    cold.release()
    assert cold.acquire() == 2 and cold.takeover
    standby = Leadership()
    standby.standby()
    assert standby.acquire() == 1 and standby.takeover
