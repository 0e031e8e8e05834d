"""Device check for a machine with an accelerator (the CUDA paths that need no vLLM wheel).

    python3 bench/cuda_check.py [--device cuda] [--model llama]

Checks and prints: device choice, device-event timing against a synchronised wall clock, the
allocator's memory figure across a known allocation, the HF-native path on the device against
the CPU (tokens and logprobs), and per-layer HF timing with device events (one sync per step).
Exits 1 if a check fails. Runs with `--device cpu` too, to exercise the script itself.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="llama")
    args = parser.parse_args()
    import torch

    from hfvllm_lab import zoo
    from hfvllm_lab.device import StepTimer, memory_figure, resolve_device, synchronize
    from hfvllm_lab.parity import compare_generations
    from hfvllm_lab.paths.hf_path import HfPath, HfProbes

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(f"device: {device} ({name}); torch {torch.__version__}")

    # 1. device events vs a synchronised wall clock around the same work
    timer = StepTimer(device)
    a = torch.randn(2048, 2048, device=device)
    synchronize(device)
    begin = time.perf_counter()
    timer.start("matmul")
    for _ in range(20):
        a = (a @ a).tanh()
    timer.stop("matmul")
    ((_, event_seconds),) = timer.collect()
    wall = time.perf_counter() - begin
    print(f"timing: {timer.accelerated and 'device events' or 'perf_counter'} {event_seconds * 1e3:.3f} ms, "
          f"synchronised wall {wall * 1e3:.3f} ms")
    check(0 < event_seconds <= wall * 1.05, "event time positive and within the synchronised wall time")

    # 2. memory figure across a known allocation
    before = memory_figure(device)
    block = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    after = memory_figure(device)
    delta = after.bytes - before.bytes
    print(f"memory ({after.source}): {before.bytes / 2**20:.1f} -> {after.bytes / 2**20:.1f} MiB (+{delta / 2**20:.1f})")
    if after.source == "allocator":
        check(delta == 256 << 20, "allocator delta equals the 256 MiB allocation")
    del block

    # 3. HF-native path on the device against the CPU
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog"]
    model_dir = zoo.path(args.model)
    ref = HfPath(model_dir, "cpu", "float32").generate(prompts, 12)
    path = HfPath(model_dir, device, "float32")
    out = path.generate(prompts, 12)
    for r, o in zip(ref, out):
        verdict = compare_generations(r, o, logprob_tol=1e-3)
        print(f"hf {device} vs cpu {o.prompt!r}: {verdict.reason}, prompt logprob diff {verdict.max_prompt_logprob_diff:.2e}")
        check(verdict.ok, f"HF on {device} matches HF on cpu for {o.prompt!r}")

    # 4. per-layer timing with device events
    timing = HfProbes(path).profile(prompts, 8, warmup=1)
    print(f"profile: timer {timing.timer}, steps {timing.steps}")
    for phase, step in timing.step_seconds.items():
        top = timing.top_level_seconds(phase)
        print(f"  {phase}: step {step * 1e3:.3f} ms, top-level modules {top * 1e3:.3f} ms, "
              f"probe estimate {timing.probe_overhead_seconds(phase) * 1e6:.1f} us")
        check(0 < top <= step, f"{phase}: per-layer sum within the step")
    check(all(r.mean_seconds > 0 for r in timing.rows), "every timed module has a positive time")
    path.close()
    print("FAILED: " + "; ".join(failures) if failures else "all device checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
