"""Child processes: engine children forked with vLLM imported and the caller's current environment;
HF-side children in a fresh interpreter without vLLM."""

import os
import sys

import pytest

from hfvllm_lab.paths.spawn import run_in_engine_child, run_spawned


def what_the_child_sees(name: str) -> tuple[bool, str | None, int]:
    return "vllm" in sys.modules, os.environ.get(name), os.getpid()


def fails_in_the_child() -> None:
    raise ValueError("raised in the child")


def test_an_engine_child_has_vllm_imported_and_the_environment_of_the_call(monkeypatch):
    run_in_engine_child(what_the_child_sees, "HFVLLM_LAB_SPAWN_PROBE")  # the forkserver is running now
    monkeypatch.setenv("HFVLLM_LAB_SPAWN_PROBE", "set after the forkserver started")
    first = run_in_engine_child(what_the_child_sees, "HFVLLM_LAB_SPAWN_PROBE")
    assert first[:2] == (True, "set after the forkserver started")
    monkeypatch.delenv("HFVLLM_LAB_SPAWN_PROBE")
    second = run_in_engine_child(what_the_child_sees, "HFVLLM_LAB_SPAWN_PROBE")
    assert second[:2] == (True, None)  # a variable removed here is gone there too
    assert os.getpid() not in (first[2], second[2]) and first[2] != second[2]  # a fresh child each call


def test_an_hf_side_child_starts_without_vllm(monkeypatch):
    monkeypatch.setenv("HFVLLM_LAB_SPAWN_PROBE", "here")
    assert run_spawned(what_the_child_sees, "HFVLLM_LAB_SPAWN_PROBE")[:2] == (False, "here")


def test_a_childs_exception_is_raised_here():
    with pytest.raises(ValueError, match="raised in the child"):
        run_in_engine_child(fails_in_the_child)
