"""How the Session binds several CPU workers' threads to cores (no engine needed)."""

from __future__ import annotations

from hfvllm_lab.paths.cpu_binding import VAR, allowed_cores, plan_binding, split_cores


def test_cores_split_evenly_or_shared_round_robin():
    assert split_cores(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_cores([0, 1], 2) == [[0], [1]]
    assert split_cores([0, 1], 4) == [[0], [1], [0], [1]]  # more workers than cores: they share


def test_one_rank_or_an_accelerator_leaves_vllm_alone(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    assert plan_binding(1, "cpu").value is None and plan_binding(1, "cpu").note == ""
    assert plan_binding(2, "cuda:0").value is None


def test_a_user_value_is_kept_and_vllm_auto_is_replaced_on_one_numa_node(monkeypatch):
    monkeypatch.setenv(VAR, "0|1")
    kept = plan_binding(2, "cpu")
    assert kept.value is None and "yours, kept" in kept.note
    monkeypatch.setenv(VAR, "auto")
    planned = plan_binding(2, "cpu")
    # this machine has one NUMA node, which vLLM's "auto" refuses for two workers
    assert planned.value == "|".join(",".join(map(str, g)) for g in split_cores(allowed_cores(), 2))
    assert "set by the Session" in planned.note and "2 CPU workers" in planned.note
