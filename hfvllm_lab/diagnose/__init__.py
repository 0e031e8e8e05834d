"""`Session.diagnose()`: which engine factor causes a mismatch between vLLM and transformers, and which
flip removes it — lenses over the same sampled sequences, each judged against the noise floor."""

from hfvllm_lab.diagnose.lenses import LENSES
from hfvllm_lab.diagnose.run import run_diagnosis

__all__ = ["LENSES", "run_diagnosis"]
