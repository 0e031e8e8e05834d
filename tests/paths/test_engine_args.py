"""User engine arguments: merged into the Session's own, refused where they would change what runs or
what can be observed, and labels derived from the class vLLM really built."""

from __future__ import annotations

import warnings

import pytest

from hfvllm_lab.errors import InputError
from hfvllm_lab.paths.engine_args import merge_engine_args
from hfvllm_lab.paths.vllm_path import built_backend

ARCH = "HfvllmLabForCausalLM"
OWN = {"model": "m", "dtype": "float32", "enforce_eager": True, "hf_overrides": {"architectures": [ARCH]},
       "enable_prefix_caching": False}


def merge(extra, backend="lab", mode="inspect"):
    return merge_engine_args(dict(OWN), extra, backend=backend, mode=mode, lab_arch=ARCH)


def test_user_hf_overrides_merge_and_keep_the_lab_architecture():
    merged = merge({"hf_overrides": {"lab_fuse": False}})
    assert merged.kwargs["hf_overrides"] == {"architectures": [ARCH], "lab_fuse": False}
    assert "architectures kept" in merged.notes[0]
    with pytest.raises(InputError, match="would replace the lab backend's class"):
        merge({"hf_overrides": {"architectures": ["LlamaForCausalLM"]}})


def test_a_callable_hf_overrides_runs_first_and_the_lab_architecture_wins():
    class Config:
        architectures = ["LlamaForCausalLM"]

    def mine(config):
        config.lab_fuse = False
        config.architectures = ["Other"]
        return config

    composed = merge({"hf_overrides": mine}).kwargs["hf_overrides"]
    config = composed(Config())
    assert config.lab_fuse is False and config.architectures == [ARCH]


@pytest.mark.parametrize("extra, match", [
    ({"model_impl": "vllm"}, "on backend='lab'"),
    ({"enforce_eager": False}, "mode='fast'"),
    ({"dtype": "bfloat16"}, r"Session\(dtype"),
    ({"max_model_len": 64}, r"Session\(max_model_len"),
    ({"worker_extension_cls": "x.Y"}, "probes"),
])
def test_arguments_that_change_what_runs_are_refused(extra, match):
    with pytest.raises(InputError, match=match):
        merge(extra)


def test_model_impl_must_agree_with_the_backend():
    assert merge({"model_impl": "vllm"}, backend="native").kwargs["model_impl"] == "vllm"
    with pytest.raises(InputError, match="that is backend='native'"):
        merge({"model_impl": "vllm"}, backend="transformers")
    with pytest.raises(InputError, match="mode='inspect'"):
        merge({"enforce_eager": True}, mode="fast")


def test_other_arguments_are_applied_and_recorded():
    merged = merge({"enable_prefix_caching": True, "kv_cache_memory_bytes": 1 << 26})
    assert merged.kwargs["enable_prefix_caching"] is True and merged.kwargs["kv_cache_memory_bytes"] == 1 << 26
    assert merged.notes == ["enable_prefix_caching=True (the Session's default was False)",
                            f"kv_cache_memory_bytes={1 << 26}"]


def test_backend_follows_the_built_class():
    assert built_backend("hfvllm_lab.backend.model.LabForCausalLM") == "lab"
    assert built_backend("vllm.model_executor.models.transformers.causal.TransformersForCausalLM") == "transformers"
    assert built_backend("vllm.model_executor.models.llama.LlamaForCausalLM") == "native"


def test_lab_fuse_off_through_engine_args_runs_the_lab_unfused_and_says_so():
    """It once replaced the lab's hf_overrides: vLLM built its native Llama under a 'lab' label, with an
    empty replacement log."""
    from hfvllm_lab import Session
    from hfvllm_lab.vocab import FUSED, REPLACED

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama", engine_args={"hf_overrides": {"lab_fuse": False}})
    with s:
        assert s.backend == "lab" and s.model_class == "hfvllm_lab.backend.model.LabForCausalLM"
        log = s.replacements
        assert log.records and not log.by_action(FUSED) and log.by_action(REPLACED)
        assert log.options["fusions and CPU kernels"] == "off (hf_overrides lab_fuse=False)"
        assert "fusions and CPU kernels: off" in repr(log) and "fusions and CPU kernels: off" in log._repr_html_()
        assert any("lab_fuse" in note for note in s.engine_notes)
        assert "lab_fuse" in s._repr_html_()
        # refused before the open Session is touched
        with pytest.raises(InputError, match="model_impl"):
            Session("llama", engine_args={"model_impl": "vllm"})
        assert not s.closed and s.generate(["x"], 1)[0].token_ids
