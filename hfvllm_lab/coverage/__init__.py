"""Architecture coverage: every causal LM in transformers' auto mapping, shrunk to a tiny seeded
checkpoint (``hfvllm_lab.zoo.shrink``) and run through the lab backend (and, as references, vLLM's
Transformers backend and vLLM native), each architecture in its own subprocess under a timeout.

    from hfvllm_lab.coverage import run_coverage
    report = run_coverage(["llama", "mixtral"], reference=True)
    report.to_frame(); report.counts(); print(report.text())

Command line: ``hfvllm-lab coverage [ARCH ...] [--reference] [--json F] [--markdown F] [--timeout S]``.
"""

from hfvllm_lab.coverage.report import (
    ERROR,
    FAIL,
    PASS,
    PATHS,
    REFUSED,
    SKIP,
    VERDICTS,
    CoverageReport,
    CoverageRow,
)

__all__ = ["CoverageReport", "CoverageRow", "run_coverage", "run_architecture", "VERDICTS", "PATHS",
           "PASS", "FAIL", "REFUSED", "ERROR", "SKIP"]


def __getattr__(name):
    if name in ("run_coverage", "run_architecture", "all_model_types"):
        from hfvllm_lab.coverage import runner

        return getattr(runner, name)
    raise AttributeError(name)
