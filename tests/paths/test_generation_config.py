"""Both paths decode greedily whatever the checkpoint's generation_config asks for."""

from __future__ import annotations

import json
import shutil

from hfvllm_lab import zoo
from tests.conftest import engine_settings

PROMPTS = ["Hello world", "abc"]


def test_checkpoint_generation_config_changes_neither_path(tmp_path):
    from hfvllm_lab.paths.hf_path import HfPath
    from hfvllm_lab.paths.vllm_path import VllmPath

    clean = zoo.path("llama")
    penalised = tmp_path / "penalised"
    shutil.copytree(clean, penalised)
    config = json.loads((penalised / "generation_config.json").read_text())
    config.update(repetition_penalty=3.0, eos_token_id=[257] + list(range(0, 256)), max_new_tokens=2)
    (penalised / "generation_config.json").write_text(json.dumps(config))

    expected = [g.token_ids for g in HfPath(clean).generate(PROMPTS, 12)]
    assert [g.token_ids for g in HfPath(penalised).generate(PROMPTS, 12)] == expected
    with VllmPath(engine_settings(penalised)) as path:
        assert [g.token_ids for g in path.generate(PROMPTS, 12)] == expected
    assert all(len(t) == 12 for t in expected)
