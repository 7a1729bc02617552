"""run_stages: independent stage calls are all submitted before any is waited on, and a
failure is raised only once every call has ended."""

from __future__ import annotations

import pytest

from flows.common import run_stages


class FakeFuture:
    def __init__(self, events: list, parameters: dict):
        self.events, self.parameters = events, parameters

    def wait(self):
        self.events.append(("wait", self.parameters["task"]))

    def result(self):
        if self.parameters["task"] == "bad":
            raise RuntimeError("bad failed")
        return f"result of {self.parameters['task']}"


class FakeRunner:
    def __init__(self):
        self.events = []

    def submit(self, stage, parameters):
        self.events.append(("submit", parameters["task"]))
        return FakeFuture(self.events, parameters)


def test_calls_are_all_submitted_before_any_is_waited_on():
    runner = FakeRunner()
    assert run_stages(runner, "stage", [{"task": "a"}, {"task": "b"}]) == ["result of a", "result of b"]
    assert runner.events == [("submit", "a"), ("submit", "b"), ("wait", "a"), ("wait", "b")]


def test_a_failure_is_raised_after_every_call_ended():
    runner = FakeRunner()
    with pytest.raises(RuntimeError, match="bad failed"):
        run_stages(runner, "stage", [{"task": "bad"}, {"task": "good"}])
    assert ("wait", "good") in runner.events


def test_without_a_runner_calls_run_here_one_after_another():
    called = []

    def stage(task):
        called.append(task)
        return task.upper()

    assert run_stages(None, stage, [{"task": "a"}, {"task": "b"}]) == ["A", "B"]
    assert called == ["a", "b"]
