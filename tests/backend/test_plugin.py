"""The backend reaches vLLM through its plugin entry point, in processes we never touched."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import entry_points

from hfvllm_lab import zoo
from hfvllm_lab.backend import ARCH


def test_entry_point_is_installed():
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("hfvllm_lab") == "hfvllm_lab.backend.register:register"


def test_plugin_leaves_an_in_process_registration_alone():
    from vllm import ModelRegistry

    from hfvllm_lab.backend import register, register_in_process
    from hfvllm_lab.backend.model import LabForCausalLM

    register_in_process()
    register()
    assert ARCH in ModelRegistry.get_supported_archs()
    assert ModelRegistry.models[ARCH].model_cls is LabForCausalLM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_server_serves_the_lab_backend(tmp_path):
    """`vllm serve CHECKPOINT --hf-overrides '{"architectures": [ARCH]}'`, multi-process engine."""
    model = str(zoo.path("llama"))
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["VLLM_LOGGING_LEVEL"] = "INFO"
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
         "--hf-overrides", json.dumps({"architectures": [ARCH]}), "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-bytes", str(64 << 20),
         "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
    reply = None
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and server.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
                )
                reply = json.load(urllib.request.urlopen(req, timeout=10))
                break
            except OSError:
                time.sleep(2)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert reply is not None, text[-3000:]
    assert reply["usage"]["completion_tokens"] == 4
    assert "Resolved architecture: HfvllmLabForCausalLM" in text
