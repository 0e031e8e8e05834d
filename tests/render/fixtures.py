"""Result objects built directly from their dataclasses, with realistic values, for render tests."""

from __future__ import annotations

from hfvllm_lab.backend.records import ReplacementRecord
from hfvllm_lab.parity import TokenParity
from hfvllm_lab.results.attention import AttentionLayerRow, AttentionReport
from hfvllm_lab.results.comparison import BisectResult, Comparison, ModuleDiff, PathFigures, PromptComparison
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.memory import MemoryPhase, MemoryReport
from hfvllm_lab.results.replacements import ModuleNode, ReplacementLog
from hfvllm_lab.results.timing import LayerTiming, ModuleTime

MODEL = "HuggingFaceTB/SmolLM2-135M"
ROTARY_REASON = "position embeddings stay HF: computed from buffers"
SUBCLASS_REASON = "subclass of nn.Linear with its own forward"


NOT_FUSED_REASON = "not fused: q/k/v are not each called once on the same input tensor"
FUSED_REASON = "LlamaMLP computes down(silu(gate(x)) * up(x)): gate/up in one matmul, then vLLM's SiluAndMul"


def replacement_log(model: str = "zoo/tiny-llama", reason: str = SUBCLASS_REASON) -> ReplacementLog:
    """One decoder layer of a tiny Llama: every status appears in the tree."""
    # name, depth, module_class, original_class, status, parameters, reason
    tree = [
        ("model", 0, "LlamaModel", "LlamaModel", "skipped", 41088, ""),
        ("model.embed_tokens", 1, "VocabParallelEmbedding", "Embedding", "replaced", 16384, ""),
        ("model.layers", 1, "ModuleList", "ModuleList", "skipped", 24576, ""),
        ("model.layers.0", 2, "LlamaDecoderLayer", "LlamaDecoderLayer", "skipped", 24576, ""),
        ("model.layers.0.self_attn", 3, "LlamaAttention", "LlamaAttention", "routed", 8192,
         "paged attention through vLLM Attention (CPU_ATTN)"),
        ("model.layers.0.self_attn.q_proj", 4, "ReplicatedLinear", "Linear", "replaced", 4096, NOT_FUSED_REASON),
        ("model.layers.0.self_attn.o_proj", 4, "ReplicatedLinear", "Linear", "replaced", 4096, ""),
        ("model.layers.0.mlp", 3, "LlamaMLP", "LlamaMLP", "skipped", 16384, ""),
        ("model.layers.0.mlp.gate_up_proj", 4, "MergedColumnParallelLinear", "Linear", "fused", 8192, FUSED_REASON),
        ("model.layers.0.mlp.down_proj", 4, "LoraLinear", "LoraLinear", "kept", 8192, reason),
        ("model.layers.0.mlp.act_fn", 4, "SiLUActivation", "SiLUActivation", "skipped", 0, ""),
        ("model.layers.0.input_layernorm", 3, "RMSNorm", "LlamaRMSNorm", "replaced", 64, "rms, width 64"),
        ("model.layers.1", 2, "LabMissingLayer", "LlamaDecoderLayer", "elsewhere", 0,
         "decoder layer 1 is held by pipeline rank 1"),
        ("model.norm", 1, "RMSNorm", "LlamaRMSNorm", "replaced", 64, "rms, width 64"),
        ("model.rotary_emb", 1, "LlamaRotaryEmbedding", "LlamaRotaryEmbedding", "kept", 0, ROTARY_REASON),
        ("lm_head", 0, "ParallelLMHead", "Linear", "tied", 16384, "tied to model.embed_tokens"),
    ]
    nodes = [ModuleNode(*t) for t in tree]
    records = [
        ReplacementRecord("model.embed_tokens", "embedding", "replaced", "Embedding", "VocabParallelEmbedding",
                          (256, 64), 16384),
        ReplacementRecord("model.layers.0.self_attn", "attention", "routed", "LlamaAttention", "Attention",
                          (), 8192, "paged attention through vLLM Attention (CPU_ATTN)"),
        ReplacementRecord("model.layers.0.self_attn.q_proj", "linear", "replaced", "Linear", "ReplicatedLinear",
                          (64, 64), 4096, NOT_FUSED_REASON),
        ReplacementRecord("model.layers.0.self_attn.o_proj", "linear", "replaced", "Linear", "ReplicatedLinear",
                          (64, 64), 4096),
        ReplacementRecord("model.layers.0.mlp.gate_up_proj", "linear", "fused", "Linear",
                          "MergedColumnParallelLinear", (128, 64), 8192, FUSED_REASON,
                          fused_from=("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")),
        ReplacementRecord("model.layers.0.mlp.down_proj", "linear", "kept", "LoraLinear", None, (64, 128), 8192,
                          reason),
        ReplacementRecord("model.layers.0.input_layernorm", "norm", "replaced", "LlamaRMSNorm", "RMSNorm",
                          (64,), 64, "rms, width 64"),
        ReplacementRecord("model.layers.1", "layer", "elsewhere", "LlamaDecoderLayer", "LabMissingLayer", (), 24576,
                          "decoder layer 1 is held by pipeline rank 1"),
        ReplacementRecord("model.norm", "norm", "replaced", "LlamaRMSNorm", "RMSNorm", (64,), 64, "rms, width 64"),
        ReplacementRecord("model.rotary_emb", "rotary", "kept", "LlamaRotaryEmbedding", None, (), 0, ROTARY_REASON),
        ReplacementRecord("lm_head", "lm_head", "tied", "Linear", "ParallelLMHead", (256, 64), 16384,
                          "tied to model.embed_tokens"),
    ]
    return ReplacementLog(model=model, backend="lab", hf_class="LlamaForCausalLM", records=records, tree=nodes,
                          note="recorded by the lab backend while building")


PARAMS = 269_030_016  # SmolLM2-135M in bfloat16


def memory_report() -> MemoryReport:
    rss = "process RSS (psutil)"
    phases = [
        MemoryPhase("before", 0, None, None, 612_368_384, rss),
        MemoryPhase("meta", 0, PARAMS, None, 618_659_840, rss, 0.041),
        MemoryPhase("materialized", PARAMS, 0, None, 889_192_448, rss, 0.118),
        MemoryPhase("loaded", PARAMS, 0, None, 901_775_360, rss, 0.853),
        MemoryPhase("kv_cache", PARAMS, 0, 1_207_959_552, 2_115_010_560, rss, 0.302),
    ]
    return MemoryReport(model=MODEL, device="cpu", backend="lab", phases=phases, eager_param_bytes=PARAMS,
                        note="CPU: process figures include the Python runtime and tokenizer")


def attention_report() -> AttentionReport:
    rows = [
        AttentionLayerRow(0, "model.layers.0.self_attn", "CPU_ATTN", 7, 9, 3, 64),
        AttentionLayerRow(1, "model.layers.1.self_attn", "CPU_ATTN", 7, 9, 3, 64, sliding_window=4096),
        AttentionLayerRow(2, "model.layers.2.self_attn", "CPU_ATTN", 6, 9, 3, 64, fallbacks=1,
                          fallback_reason="prefill longer than the sliding window: ran TORCH_SDPA"),
        AttentionLayerRow(3, "model.layers.3.self_attn", "TORCH_SDPA", 7, 9, 3, 64),
    ]
    return AttentionReport(path="vllm", selected="vllm", reason="requested attention='vllm'", rows=rows,
                           forward_calls=7)


def _timing_rows(phase: str, scale: float) -> list[ModuleTime]:
    rows = [ModuleTime("model.embed_tokens", "embedding", None, phase, 1, 41e-6 * scale)]
    for layer in range(2):
        base = f"model.layers.{layer}"
        rows += [
            ModuleTime(base, "layer", layer, phase, 1, 1.52e-3 * scale * (1 + 0.1 * layer)),
            ModuleTime(f"{base}.input_layernorm", "norm", layer, phase, 1, 22e-6 * scale),
            ModuleTime(f"{base}.self_attn", "attention", layer, phase, 1, 0.61e-3 * scale * (1 + 0.1 * layer)),
            ModuleTime(f"{base}.mlp", "mlp", layer, phase, 1, 0.83e-3 * scale),
        ]
    rows += [ModuleTime("model.norm", "final_norm", None, phase, 1, 19e-6 * scale),
             ModuleTime("lm_head", "lm_head", None, phase, 1, 0.47e-3 * scale)]
    return rows


def layer_timing(path: str = "vllm", scale: float = 1.0) -> LayerTiming:
    return LayerTiming(
        path=path, device="cpu", timer="perf_counter",
        rows=_timing_rows("prefill", 2.6 * scale) + _timing_rows("decode", scale),
        steps={"prefill": 3, "decode": 30},
        step_seconds={"prefill": 0.0124 * scale, "decode": 0.00412 * scale},
        warmup_steps=2, hooks_per_step={"prefill": 11, "decode": 11}, probe_seconds_per_hook=1.8e-6,
    )


def _generation(prompt: str, prompt_ids: list[int], tokens: list[int], text: str) -> Generation:
    tops = [{t: -0.05 * (i + 1), t + 1: -2.5} for i, t in enumerate(tokens)]
    return Generation(prompt, prompt_ids, tokens, text, tops, [None] + [-3.1] * (len(prompt_ids) - 1))


def bisect_result(prompt: str = "The quick brown fox") -> BisectResult:
    rows = [
        ModuleDiff("model.embed_tokens", 0.0, True),
        ModuleDiff("model.layers.0.self_attn", 1.2e-3, True),
        ModuleDiff("model.layers.0.mlp", 1.7e-3, True),
        ModuleDiff("model.layers.0", 1.9e-3, True),
        ModuleDiff("model.layers.1.self_attn", 4.1e-3, True),
        ModuleDiff("model.layers.1.mlp", 2.7e-2, False),
        ModuleDiff("model.layers.1", 3.0e-2, False),
        ModuleDiff("model.norm", 3.3e-2, False),
        ModuleDiff("lm_head", 0.41, False),
    ]
    return BisectResult(prompt=prompt, tolerance=1e-2, rows=rows, first_divergent="model.layers.1.mlp",
                        note="prefill hidden states, bfloat16")


def comparison(prompt: str = "The quick brown fox") -> Comparison:
    same = [11, 905, 28, 339, 1345, 30]
    p1 = PromptComparison(
        "Hello world",
        _generation("Hello world", [19556, 905], same, ", I am a student."),
        _generation("Hello world", [19556, 905], same, ", I am a student."),
        TokenParity(True, None, "identical tokens", 3.1e-4),
        [2.1e-5, 4.0e-5, 1.2e-4, 8.0e-5, 3.3e-4, 1.9e-4],
    )
    hf, vl = [260, 2365, 4718, 28, 253, 11], [260, 2365, 4718, 30, 1812, 11]
    p2 = PromptComparison(
        prompt,
        _generation(prompt, [504, 2365, 6354, 16438], hf, " jumps over the lazy dog"),
        _generation(prompt, [504, 2365, 6354, 16438], vl, " jumps over a sleepy dog"),
        TokenParity(False, 3, "step 3: 28 vs 30, logprob gap 0.31 >= 0.05", 8.2e-4),
        [1.0e-4, 5.2e-4, 2.3e-3, None, None, None],
    )
    figures = {
        "hf": PathFigures("hf", "transformers (sdpa)", 41.24, 12, 0.291, PARAMS, 1_182_793_728,
                          "process RSS (psutil)"),
        "vllm": PathFigures("vllm", "vLLM lab backend (CPU_ATTN)", 63.49, 12, 0.189, PARAMS, 2_115_010_560,
                            "process RSS (psutil)"),
    }
    return Comparison(
        model=MODEL, device="cpu", dtype="bfloat16", prompts=[p1, p2], figures=figures,
        timing={"hf": layer_timing("hf", 1.4), "vllm": layer_timing("vllm")},
        residency="sequential: the HF model was freed before the vLLM engine was built",
        bisect=bisect_result(prompt),
    )


def teacher_forced(ratio: float = 0.9, decode_ratio: float | None = None):
    """Two sequences: the judged path at `ratio` x a floor; position 0 of each agrees exactly. With
    `decode_ratio`, decode steps judged too, the verdict the worse of the two parts."""
    from hfvllm_lab.results.teacher import DistributionDiff, TeacherForced, Verdict
    from hfvllm_lab.rules import worse_of

    floor_kl = [[0.0, 1e-3, 2e-3, 1e-3], [0.0, 3e-3, 1e-3]]
    judged_kl = [[k * ratio for k in row] for row in floor_kl]

    def diff(path, kls):
        flat = [k for row in kls for k in row]
        return DistributionDiff(path, "transformers (float32)", len(flat), sum(flat) / len(flat), max(flat),
                                max(flat), 0.95, 0.1, kls)

    status = "within noise" if ratio <= 2.5 else "beyond noise"
    teacher = TeacherForced("bfloat16", [[1, 2, 3, 4, 5], [1, 6, 7, 8]], [3, 2], diff("lab (bfloat16)", judged_kl),
                            [diff("transformers (bfloat16)", floor_kl)],
                            Verdict(status, ratio, "rule", f"KL mean at {ratio}x the floor"))
    teacher.prefill_verdict = teacher.verdict
    if decode_ratio is not None:
        teacher.decode_sequences, teacher.decode_prompt_lengths = [[1, 2, 3, 4, 5]], [2]
        teacher.decode_judged = diff("lab (bfloat16), decode steps", [[k * decode_ratio for k in floor_kl[0]]])
        teacher.decode_floors = [diff("transformers (bfloat16, KV-cache decode)", floor_kl[:1])]
        teacher.decode_verdict = Verdict("beyond noise" if decode_ratio > 2.5 else "within noise", decode_ratio,
                                         "rule", f"KL mean at {decode_ratio}x the floor")
        teacher.verdict = worse_of([("prefill", teacher.prefill_verdict), ("decode", teacher.decode_verdict)])
    return teacher


def rank_report():
    """Two pipeline stages of two tensor ranks: each rank's row, log and memory, and timing per rank."""
    from dataclasses import replace

    from hfvllm_lab.results.ranks import RankReport, RankRow

    rows, logs, memories, timings = [], [], [], []
    for rank in range(4):
        tp, pp = rank % 2, rank // 2
        row = RankRow(rank, tp, 2, pp, 2, (2 * pp, 2 * pp + 2), 205824 + 256 * pp, 1024 + 256 * pp, 12 << 20,
                      588 << 20, {"replaced": 9 + pp, "fused": 4, "routed": 2, "kept": 1, "elsewhere": 4 - pp},
                      {"prefill": 0.003 + 0.001 * pp, "decode": 0.002})
        rows.append(row)
        logs.append(replace(replacement_log(), rank=row.label))
        memories.append(replace(memory_report(), rank=row.label))
        timings.append(replace(layer_timing(), rank=row.label))
    return RankReport("zoo/tiny-llama", "lab", "tensor parallel 2 x pipeline parallel 2 (4 ranks)", "mp", rows, logs,
                      memories, timings, ["a note"])
