"""Modules that keep state between tokens (gated delta-nets, Mamba mixers, short convolutions) run as
HF code with each request's state in vLLM's state cache: probed layouts, parity with transformers on
decode steps, requests arriving at different steps, preemption under a small cache, the refusals."""

from __future__ import annotations

import pytest
import torch

from hfvllm_lab.errors import UnsupportedModelError
from hfvllm_lab.zoo import shrink

HYBRID = "qwen3_next"  # gated delta-net layers beside full attention
PROMPTS = [[(7 * i + 3 * k) % 250 + 1 for k in range(4 + 9 * i)] for i in range(4)]  # 4, 13, 22, 31 tokens
ARRIVALS = {0: [0], 2: [1], 5: [2], 11: [3]}  # engine step -> requests added before it
NEW_TOKENS = 200


def meta_model(model_type: str):
    from hfvllm_lab.backend.state import _meta_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(shrink.shrunk_path(model_type))
    return config, _meta_model(config, False)


def hf_greedy(model_dir, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers float32, one sequence at a time with its own cache (its state included)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for prompt in prompts:
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            tokens = []
            for _ in range(new_tokens):
                tokens.append(int(out.logits[0, -1].argmax()))
                out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                            position_ids=torch.tensor([[len(prompt) + len(tokens) - 1]]), use_cache=True)
            outs.append(tokens)
    return outs


def staggered(session, prompts, arrivals, new_tokens) -> list[list[int]]:
    """Greedy requests added to the engine between its steps, so prefills meet running decodes."""
    from vllm import SamplingParams

    engine = session._engine.llm.llm_engine
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    done: dict[str, list[int]] = {}
    for step in range(20 * new_tokens):
        for i in arrivals.get(step, []):
            engine.add_request(f"stagger-{i}", {"prompt_token_ids": prompts[i]}, params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        if len(done) == len(prompts):
            break
    return [done[f"stagger-{i}"] for i in range(len(prompts))]


def slot_calls(session) -> dict[str, int]:
    """The first state slot's call counts (decode batches, fresh prefills, resumed prefills, mixed steps)."""
    from hfvllm_lab.backend.state import STATE_ATTR

    return session._engine.apply_model(
        lambda m: next(dict(getattr(x, STATE_ATTR).calls) for x in m.modules() if hasattr(x, STATE_ATTR)),
        track=False)[0]


@pytest.fixture(scope="module")
def reference():
    return hf_greedy(shrink.shrunk_path(HYBRID), PROMPTS, NEW_TOKENS)


@pytest.fixture(scope="module")
def session():
    from hfvllm_lab import Session

    # 16 tokens per step: the 22- and 31-token prompts are prefilled in chunks, the later chunks
    # continuing from the state the earlier ones left
    with Session(shrink.shrunk_path(HYBRID), dtype="float32", max_model_len=256,
                 engine_args={"max_num_batched_tokens": 16}) as s:
        yield s


# -- probing (no engine) --------------------------------------------------------------------------
def test_the_probe_finds_each_modules_state_from_what_it_writes():
    from hfvllm_lab.backend.state import find_stateful, plan_state

    config, hf = meta_model(HYBRID)
    text = config.get_text_config()
    found = find_stateful(hf)
    kinds = {i for i, t in enumerate(text.layer_types) if t == "linear_attention"}
    assert {m.layer_idx for _, m, _ in found} == kinds  # the delta-nets; decoder layers only hand the cache on
    plans = plan_state(hf, text, torch.float32, tp_size=1)
    layout = plans[0].layout
    assert [(t.kind, t.index) for t in layout.tensors] == [("conv", 0), ("recurrent", 0)]
    conv, recurrent = layout.tensors
    net = hf.get_submodule(found[0][0])
    assert conv.shape == (net.conv1d.in_channels, net.conv_kernel_size)  # channels x kernel, no batch axis
    assert recurrent.shape == (net.num_v_heads, net.head_k_dim, net.head_v_dim)
    assert layout.bytes_per_request == 4 * (conv.shape[0] * conv.shape[1] + recurrent.shape[0] * recurrent.shape[1]
                                            * recurrent.shape[2])

    _, llama = meta_model("llama")
    assert find_stateful(llama) == []


def test_a_sparse_attention_indexer_is_refused_for_its_attention_not_its_state():
    from hfvllm_lab.backend.state import plan_state

    config, hf = meta_model("glm_moe_dsa")
    with pytest.raises(UnsupportedModelError, match="sparse-attention indexer") as err:
        plan_state(hf, config.get_text_config(), torch.float32, tp_size=1)
    assert "keeps state" not in str(err.value)


def test_tensor_parallel_is_refused_up_front_naming_the_stateful_module():
    from hfvllm_lab.paths.vllm_path import EngineSettings, preflight

    settings = EngineSettings(model_dir=shrink.shrunk_path(HYBRID), tensor_parallel_size=2)
    with pytest.raises(UnsupportedModelError, match=r"linear_attn \(Qwen3NextGatedDeltaNet\) keeps state .*"
                                                    r"tensor_parallel_size=2"):
        preflight(settings)


# -- the engine -----------------------------------------------------------------------------------
def test_staggered_requests_decode_200_tokens_as_transformers(session, reference):
    """Requests join at steps 0, 2, 5 and 11 while others decode; two prompts are chunked."""
    assert staggered(session, PROMPTS, ARRIVALS, NEW_TOKENS) == reference
    calls = slot_calls(session)
    assert calls["mixed"] > 0 and calls["decode"] >= NEW_TOKENS and calls["resumed"] > 0, calls


def test_logprobs_on_prompts_and_decode_steps_match_transformers(session):
    from hfvllm_lab.coverage.child import hf_reference
    from hfvllm_lab.parity import LOGPROB_TOLERANCE, compare_generations

    ref = hf_reference(shrink.shrunk_path(HYBRID))
    got = session._engine.generate([g.prompt_token_ids for g in ref], len(ref[0].token_ids), top_k=5)
    for a, b in zip(ref, got):
        parity = compare_generations(a, b, top_k=5, logprob_tol=LOGPROB_TOLERANCE["float32"])
        assert parity.ok and a.token_ids == b.token_ids, parity


def test_replacements_and_memory_show_the_state(session):
    from hfvllm_lab.backend.records import STATE

    log = session.replacements
    stateful = [r for r in log.records if r.kind == STATE]
    config, _ = meta_model(HYBRID)
    assert len(stateful) == sum(t == "linear_attention" for t in config.get_text_config().layer_types)
    assert all(r.original_class == "Qwen3NextGatedDeltaNet" and "KiB per request" in r.reason for r in stateful)
    assert "state cache" in repr(log)
    memory = session.memory
    kv = memory.phase("kv_cache")
    assert kv.state_cache_bytes and 0 < kv.state_cache_bytes <= kv.kv_cache_bytes
    assert "state cache [tensors]" in repr(memory) and "state cache" in memory._repr_html_()
    assert "KiB per request" in memory.note


def test_the_dashboard_draws_the_stateful_modules_and_the_state_cache(session):
    pytest.importorskip("ipywidgets")
    from hfvllm_lab.dashboard import Dashboard

    dash = Dashboard(session=session)
    dash.show_session(session.replacements, session.memory, session.attention)
    assert "Qwen3NextGatedDeltaNet" in dash.counts_html.value and "LabStateSlot" in dash.counts_html.value
    assert "state cache [tensors]" in dash.memory_html.value and dash.memory_plot.value.startswith("<img")


def test_the_attention_view_counts_the_stateful_modules(session):
    from hfvllm_lab.vocab import STATE_BACKEND

    session.generate(["Hello"], 3)
    rows = session.attention.rows
    stateful = [r for r in rows if r.implementation == STATE_BACKEND]
    assert stateful and all(r.calls > 0 and r.fallbacks == 0 for r in stateful)
    assert [r.layer for r in rows] == sorted(r.layer for r in rows)


def _forget_state_in_decode(model) -> int:
    """Defect: decode steps start from an empty HF cache instead of the request's stored state."""
    from hfvllm_lab.backend.state import STATE_ATTR, fresh_cache

    slots = [getattr(m, STATE_ATTR) for m in model.modules() if hasattr(m, STATE_ATTR)]
    for slot in slots:
        object.__setattr__(slot, "_cache_with", lambda states, s=slot: fresh_cache(s.text_config, s.cache_class))
    return len(slots)


def _remember_state_again(model) -> None:
    from hfvllm_lab.backend.state import STATE_ATTR

    for m in model.modules():
        if hasattr(m, STATE_ATTR):
            vars(getattr(m, STATE_ATTR)).pop("_cache_with", None)


def test_compare_catches_a_state_lost_between_decode_steps(session):
    """A state not carried from step to step: the engine's decode steps are judged and fail (this
    session also prefills long sequences in 16-token chunks, which resume from the state too)."""
    prompts = ["Hello world", "The quick brown fox"]
    assert session.engine.apply_model(_forget_state_in_decode, track=False)[0] > 0
    try:
        cmp = session.compare(prompts, 8, profile=False, native_floor=False)
    finally:
        session.engine.apply_model(_remember_state_again, track=False)
    assert cmp.verdict.status == "fail", cmp.verdict
    assert cmp.teacher.decode_verdict.status == "fail", cmp.teacher.decode_verdict
    clean = session.compare(prompts, 8, profile=False, native_floor=False)
    assert clean.verdict.status == "pass", clean.verdict  # float32: the strict rule


@pytest.mark.parametrize("model_type", ["lfm2_moe", "nemotron_h"])
def test_short_convolution_and_mamba_hybrids_match_transformers(model_type):  # after the Session's tests
    """LFM2-MoE's short convolutions; Nemotron-H's Mamba-2 mixers beside MLP-only and attention blocks.
    The coverage's own judgement (tokens and top-5 logprobs, float32), in this process."""
    from transformers import AutoConfig

    from hfvllm_lab.coverage.child import hf_reference, run_path
    from hfvllm_lab.coverage.report import PASS

    directory = shrink.shrunk_path(model_type)
    verdict, reason = run_path("lab", directory, AutoConfig.from_pretrained(directory), hf_reference(directory))
    assert verdict == PASS, reason


def test_preempted_requests_are_recomputed_with_the_same_tokens(reference):  # last: it closes `session`
    """Ten cache blocks: the four requests are admitted with two each (an attention block of 128 tokens
    and a state slot), and past 128 tokens each needs a third, so vLLM preempts some and prefills
    them again from scratch (their states start afresh); every sequence still matches."""
    from hfvllm_lab import Session

    with Session(shrink.shrunk_path(HYBRID), dtype="float32", max_model_len=256,
                 engine_args={"kv_cache_memory_bytes": 660_000}) as s:  # 10 blocks of 64 KiB
        got = staggered(s, PROMPTS, {0: [0, 1, 2, 3]}, NEW_TOKENS)
        calls = slot_calls(s)
    assert got == reference
    assert calls["prefill"] > len(PROMPTS), calls  # some request was prefilled again after preemption
