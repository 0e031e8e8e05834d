"""Sessions over tensor x pipeline parallel on the CPU (vLLM's multiprocessing executor): compare() across
ranks, every rank's log / memory / timing, the dashboard's rank selector, and refusals up front."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings

import pytest

from hfvllm_lab import Session, zoo
from hfvllm_lab.errors import InputError, UnsupportedModelError
from hfvllm_lab.vocab import ELSEWHERE, FUSED, LAYER
from tests.conftest import hf_parameter_bytes

PROMPTS = ["Hello world", "The quick brown fox"]
CONFIGS = [("llama", 2, 1), ("llama", 1, 2), ("llama", 2, 2), ("qwen2-moe", 2, 1), ("qwen2-moe", 1, 2),
           ("qwen2-moe", 2, 2),
           # a head tied to the embedding (the last rank loads its own copy) and embeddings scaled after lookup
           ("gemma", 1, 2)]


def one_device_bytes(name: str) -> int:
    """What one rank holds: the HF parameters, embedding and (untied) head padded to vLLM's 64-row vocab."""
    config = json.loads((zoo.path(name) / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    padded = -(-vocab // 64) * 64
    return hf_parameter_bytes(name) + (padded - vocab) * hidden * 4 * (1 if config["tie_word_embeddings"] else 2)


def fused_moe_shards(model) -> list[tuple[int, int, int]]:
    """Run on each rank (module level: the mp executor pickles it by reference): each fused MoE's
    (tp size, tp rank, weight rows loaded from gate+up)."""
    out = []
    for mod in model.modules():
        if type(mod).__name__ == "LabFusedExperts":
            experts = mod.runner.routed_experts
            config = experts.moe_config.moe_parallel_config
            out.append((config.tp_size, config.tp_rank, int((experts.w13_weight[0].abs().sum(-1) > 0).sum())))
    return out


def widen_last_mlp(model) -> bool:
    """A defect on the last pipeline stage only: layer 3's MLP output scaled by 1.05 where this rank holds it."""
    for name, module in model.named_modules():
        if name.endswith("layers.3.mlp"):
            forward = module.forward
            module.forward = lambda *a, **k: forward(*a, **k) * 1.05
            return True
    return False


def start(name: str, tp: int, pp: int, **kwargs) -> Session:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "closing the previous Session"
        return Session(name, tensor_parallel_size=tp, pipeline_parallel_size=pp, max_model_len=128, **kwargs)


@pytest.mark.parametrize("name,tp,pp", CONFIGS, ids=[f"{n}-tp{t}-pp{p}" for n, t, p in CONFIGS])
def test_a_parallel_session_compares_and_shows_every_rank(name, tp, pp):
    session = start(name, tp, pp)
    try:
        # the Session split this one-NUMA-node machine's cores between the workers itself
        assert any(n.startswith("VLLM_CPU_OMP_THREADS_BIND=") and "set by the Session" in n
                   for n in session.engine_notes), session.engine_notes
        report = session.ranks
        assert len(report) == tp * pp and [r.rank for r in report.rows] == list(range(tp * pp))
        assert report.model_param_bytes() == one_device_bytes(name)  # the ranks' shards make up one device's
        for row, log in zip(report.rows, report.replacements):
            assert row.label in log.rank and row.label in repr(log)
            if pp == 1:
                assert row.layers is None and ELSEWHERE not in row.actions
                continue
            start_layer = 2 * row.pipeline_rank
            assert row.layers == (start_layer, start_layer + 2)  # 4 layers over 2 stages
            elsewhere = {r.name: r.reason for r in log.records if r.action == ELSEWHERE and r.kind == LAYER}
            others = {i for i in range(4) if not start_layer <= i < start_layer + 2}
            assert {int(n.rsplit(".", 1)[-1]) for n in elsewhere} == others
            assert all(f"pipeline rank {1 - row.pipeline_rank}" in why for why in elsewhere.values())
            assert row.param_bytes < one_device_bytes(name)
        tied = json.loads((zoo.path(name) / "config.json").read_text())["tie_word_embeddings"]
        assert (report.rows[-1].tied_copy_bytes > 0) == (tied and pp > 1)
        if tp > 1:
            assert all(r.replicated_bytes > 0 for r in report.rows)
            assert all(r.actions.get(FUSED, 0) > 0 for r in report.rows)  # q/k/v and gate/up column-parallel
        text, html = repr(report), report._repr_html_()
        assert all(r.label.split(" (")[0] in text for r in report.rows) and "decoder layers" in text
        assert html.count('class="hvl-rank"') == tp * pp
        if name == "qwen2-moe" and pp == 2:  # a trainer's update: each rank loads what it holds, skips the rest
            from safetensors import safe_open

            keys = ["model.layers.3.mlp.experts.1.gate_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
            with safe_open(str(zoo.path(name) / "model.safetensors"), "pt") as f:
                bucket = [(k, f.get_tensor(k)) for k in keys]  # the checkpoint's own values: outputs unchanged
            loaded = session.load_weights(bucket)
            assert any("layers.3.mlp" in n for n in loaded) and any("layers.0.self_attn" in n for n in loaded), loaded
        if name == "qwen2-moe" and tp == 2 and pp == 1:  # each rank holds half of every expert's width
            shards = session.apply_model(lambda model: fused_moe_shards(model))  # a lambda reaches every worker
            assert [set(rank) for rank in shards] == [{(2, 0, 32)}, {(2, 1, 32)}]

        profiled = tp == 2 and pp == 2
        if name == "llama" and profiled:  # this one through the dashboard's Run, as a notebook user would
            cmp = run_in_dashboard(session)
        else:
            cmp = session.compare(PROMPTS[:1], max_tokens=4, profile=profiled, bisect=pp == 2)
        assert cmp.ok, repr(cmp)
        if pp == 2:  # hidden states captured from the rank that ran each module, every decoder layer among them
            compared = {row.module for row in cmp.bisect.rows}
            assert {f"model.layers.{i}" for i in range(4)} <= compared and cmp.bisect.first_divergent is None
        if name == "llama" and (tp, pp) == (1, 2):  # a defect on rank 1 fails the verdict; bisect names its layer
            assert session.apply_model(widen_last_mlp) == [False, True]
            broken = session.compare(PROMPTS[:1], max_tokens=4, profile=False, bisect=True)
            assert not broken.ok and broken.bisect.first_divergent.startswith("model.layers.3"), repr(broken.bisect)
        if profiled:
            timing = session.ranks.timing
            assert len(timing) == 4 and all(t.step_seconds for t in timing)
            for row, own in zip(report.rows, timing):
                layers = {r.layer for r in own.rows if r.kind == "layer"}
                assert layers == set(range(*row.layers)), (row.label, layers)
            merged = cmp.timing["vllm"]
            assert {r.layer for r in merged.rows if r.kind == "layer"} == set(range(4))
            assert all(r.step_seconds for r in session.ranks.rows)
    finally:
        session.close()


def run_in_dashboard(session):
    """Run (compare with bisect, profile) from a dashboard over the Session, then pick rank 3 in its selector:
    the Replacements, Memory and Timing tabs show that rank's own views."""
    from hfvllm_lab.dashboard import Dashboard

    dash = Dashboard(session=session)
    view = dash.view
    assert view.rank_choice.layout.display != "none" and len(view.rank_choice.options) == 5
    assert view.ranks_html.value.count('class="hvl-rank"') == 4
    view.prompts.value = "\n".join(PROMPTS)
    view.max_tokens.value = 6
    dash.run_button.click()
    assert dash.last_error is None, view.error.value
    assert dash.session is session  # the controls still describe it: no rebuild
    view.rank_choice.value = 3
    label = "rank 3 (tp 1/2, pp 1/2)"
    assert label in view.replacements_html.value and label in view.memory_html.value
    assert "elsewhere" in view.records_html.value and "this rank" in view.records_html.value  # shards of 2 ranks
    assert label in view.timing_html.value and "model.layers.3" in view.timing_html.value
    assert "model.layers.0 " not in view.timing_html.value.replace("<", " ")
    view.rank_choice.value = -1
    assert "rank 3" not in view.memory_html.value
    return dash.comparison


def test_unsupported_splits_are_refused_up_front_and_the_older_session_keeps_serving(tmp_path):
    older = start("llama", 1, 1)
    try:
        with pytest.raises(UnsupportedModelError, match="more ranks than llama's 4 decoder layers"):
            start("llama", 1, 8)
        with pytest.raises(UnsupportedModelError, match="1 KV heads do not split evenly"):
            start("gemma", 2, 1)  # MQA: one KV head
        no_plan = tmp_path / "llama-no-plan"
        shutil.copytree(zoo.path("llama"), no_plan)
        config = json.loads((no_plan / "config.json").read_text())
        (no_plan / "config.json").write_text(json.dumps({**config, "base_model_pp_plan": None}))
        with pytest.raises(UnsupportedModelError, match="declares no pipeline plan"):
            start(str(no_plan), 1, 2)
        with pytest.raises(InputError, match="choose one of mp, ray"):
            start("llama", 2, 1, distributed_executor_backend="threads")
        with pytest.raises(InputError, match="Session\\(pipeline_parallel_size=...\\)"):
            start("llama", 1, 1, engine_args={"pipeline_parallel_size": 2})
        # vLLM's CPU platform names no Ray device: refused before Ray starts (elsewhere: the `ray` extra, if missing)
        from vllm.platforms import current_platform

        ray_refusal = ("does not run the Ray executor" if not current_platform.ray_device_key
                       else r"hfvllm_lab\[ray\]" if importlib.util.find_spec("ray") is None else None)
        if ray_refusal:
            with pytest.raises(InputError, match=ray_refusal):
                start("llama", 2, 1, distributed_executor_backend="ray")
        assert not older.closed and older.generate(PROMPTS, 2)[0].token_ids
    finally:
        older.close()


def test_an_engine_setup_failure_is_reported_as_such(monkeypatch):
    """A binding the user set that cannot serve two workers: vLLM's executor refuses it before any model is
    built, and the Session says the engine's setup failed (not that the lab could not build the model)."""
    from hfvllm_lab.errors import EngineSetupError

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")  # one core list for two workers
    with pytest.raises(EngineSetupError, match="engine setup failed before the model was built") as failure:
        start("llama", 2, 1)
    assert "tensor parallel 2" in str(failure.value) and "local world size 2" in str(failure.value)
