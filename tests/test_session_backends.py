"""The reference backends seen through the same probes: vLLM's built-in Transformers backend and
vLLM's native model class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hfvllm_lab.errors import ProbeUnavailableError

MODEL = "llama"


def expected_attention_backend(dtype: str) -> str:
    """The attention backend vLLM's platform selects here for MODEL's head size in this dtype."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.platforms import current_platform
    from vllm.v1.attention.selector import get_attn_backend

    from hfvllm_lab import zoo

    with set_current_vllm_config(VllmConfig()):
        name = get_attn_backend(zoo.spec(MODEL).config_kwargs()["head_dim"], getattr(torch, dtype), None).get_name()
    assert name == "CPU_ATTN" or not current_platform.is_cpu(), name
    return name

OBSERVE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from hfvllm_lab import Session

def main():
    s = Session(sys.argv[2], backend=sys.argv[1])
    log, mem = s.replacements, s.memory
    s.reset_attention_counts()
    s.generate(["Hello", "abc"], 3)
    att = s.attention
    timing = s.profile(["Hello", "abc"], 4)
    cmp = s.compare(["Hello world"], 6)
    out = dict(
        dtype=s.dtype, note=log.note, records=len(log.records), statuses=sorted({n.status for n in log.tree}),
        replaced=[n.name for n in log.tree if n.status == "replaced"],
        phases=[p.phase for p in mem.phases], kv=mem.phase("kv_cache").kv_cache_bytes,
        forward_calls=att.forward_calls, calls=[r.calls for r in att.rows], impl=[r.implementation for r in att.rows],
        steps=timing.steps, within=all(timing.top_level_seconds(p) <= timing.step_seconds[p] for p in timing.steps),
        ok=cmp.ok, diff=cmp.max_logprob_diff, residency=cmp.residency,
    )
    s.close()
    print("RESULT" + json.dumps(out))

if __name__ == "__main__":
    main()
"""


def observe(backend: str, tmp_path) -> dict:
    """In a child process: the built-in backend patches transformers classes process-wide."""
    script = tmp_path / "observe.py"
    script.write_text(OBSERVE)
    proc = subprocess.run([sys.executable, str(script), backend, MODEL], capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_reference_backend_through_the_probes(backend, tmp_path):
    out = observe(backend, tmp_path)
    assert out["records"] == 0 and out["note"]  # no records: said so, and the tree is observed
    assert "model.layers.0.self_attn.o_proj" in out["replaced"]  # a vLLM linear layer
    assert out["phases"] == ["before", "kv_cache"] and out["kv"] > 0
    assert out["calls"] == [out["forward_calls"]] * 4 and set(out["impl"]) == {expected_attention_backend(out["dtype"])}
    assert out["steps"] == {"prefill": 1, "decode": 3} and out["within"]
    assert out["ok"] and out["diff"] < (1e-3 if out["dtype"] == "float32" else 0.1)  # the README's bounds
    if backend == "transformers":
        assert "child process" in out["residency"]


def test_bisect_is_refused_on_the_native_model_with_the_reason():
    from hfvllm_lab import Session

    with Session(MODEL, backend="native") as s:
        with pytest.raises(ProbeUnavailableError, match="not comparable"):
            s.bisect("Hello")
        assert len(s.generate(["Hello"], 2)[0].token_ids) == 2
