"""Notebook lifecycle: replacing, closing, interrupting, and building Sessions in a row."""

from __future__ import annotations

import _thread
import gc
import threading
import time
import warnings

import pytest

from hfvllm_lab import Session, zoo
from hfvllm_lab.device import process_rss
from hfvllm_lab.errors import InputError


def test_a_new_session_closes_the_previous_one():
    first = Session("llama")
    with pytest.warns(UserWarning, match="closing the previous Session"):
        second = Session("qwen3")
    try:
        assert first.closed and not second.closed
        with pytest.raises(InputError, match="closed"):
            first.generate(["x"], 1)
        assert len(second.generate(["x"], 2)[0].token_ids) == 2
    finally:
        second.close()
    assert second.closed


def test_a_refused_session_leaves_the_previous_one_generating(tmp_path):
    import json
    import shutil

    from hfvllm_lab.errors import DeviceError, ModelNotFoundError, UnsupportedModelError

    # The same checkpoint with a rope whose frequencies depend on the batch: refused up front.
    bad = tmp_path / "dynamic-rope"
    shutil.copytree(zoo.path("llama"), bad)
    config = json.loads((bad / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (bad / "config.json").write_text(json.dumps(config))
    with Session("llama") as first:
        expected = first.generate(["Hello"], 3)[0].token_ids
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # nothing may be closed on the way to a refusal
            with pytest.raises(UnsupportedModelError, match="dynamic"):
                Session(bad)
            with pytest.raises(ModelNotFoundError):
                Session(tmp_path / "no-such-checkpoint")
            with pytest.raises(DeviceError, match="too little memory"):  # a KV cache of terabytes
                Session("llama", max_num_seqs=10**6)
        assert not first.closed
        assert first.generate(["Hello"], 3)[0].token_ids == expected


def test_ctrl_c_during_generation_leaves_the_session_usable():
    with Session("llama", max_model_len=512) as s:
        expected = s.generate(["Hello"], 3)[0].token_ids
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        began = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            s.generate(["Hello world"] * 4, max_tokens=480)
            time.sleep(30)  # only reached if generation ended before the timer fired
        timer.cancel()
        assert time.perf_counter() - began < 30
        assert s.engine.llm.llm_engine.get_num_unfinished_requests() == 0
        assert s.generate(["Hello"], 3)[0].token_ids == expected


def test_sessions_in_a_row_do_not_grow_memory_by_more_than_one_model():
    name = "llama-medium"
    model_bytes = sum(p.stat().st_size for p in zoo.path(name).glob("*.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readings = []
        for _ in range(3):
            s = Session(name)
            s.generate(["Hello"], 2)
            s.close()
            del s
            gc.collect()
            readings.append(process_rss())
    growth = readings[-1] - readings[0]
    assert growth <= model_bytes, f"RSS grew {growth >> 20} MiB over 3 sessions (model {model_bytes >> 20} MiB): {readings}"
