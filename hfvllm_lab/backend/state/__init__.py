"""Modules that keep state between tokens outside attention (convolutions, recurrences: Mamba mixers,
gated delta-nets, short convolutions), run as HF code with each request's state in vLLM's state cache.

Each such module gets a `LabStateSlot`: a vLLM `MambaBase` layer that declares the module's state
tensors (found by running a copy of its decoder layer on sample inputs and reading what the module
wrote into a fresh HF cache), so vLLM's scheduler allocates, frees and accounts one state slot per
request like KV cache. In each forward the slot loads every sequence's state into an HF cache
object, runs the module's own code and writes the new state back: decodes in one batch, each fresh
prefill on its own, and a prefill that continues from a state (a chunked or resumed prompt) one
token at a time through the module's decode path.
"""

from hfvllm_lab.backend.state.hf_cache import fresh_cache, load_states, read_states
from hfvllm_lab.backend.state.layout import (  # noqa: F401  (_DTYPES: the model class's dtype answers)
    _DTYPES,
    CACHE_ARGUMENTS,
    STATE_ATTR,
    StateLayout,
    StateTensor,
)
from hfvllm_lab.backend.state.plan import (  # noqa: F401  (_meta_model: the HF model on meta, Session side)
    StatePlan,
    _meta_model,
    attach_state,
    model_keeps_state,
    plan_state,
    refuse_tensor_parallel,
    registered_layout,
    state_copy_funcs,
)
from hfvllm_lab.backend.state.probe import find_stateful, probe_layout
from hfvllm_lab.backend.state.slot import state_slot_class
from hfvllm_lab.vocab import STATE_BACKEND

__all__ = ["CACHE_ARGUMENTS", "STATE_ATTR", "STATE_BACKEND", "StateLayout", "StatePlan", "StateTensor",
           "attach_state", "find_stateful", "fresh_cache", "load_states", "model_keeps_state", "plan_state",
           "probe_layout", "read_states", "refuse_tensor_parallel", "registered_layout", "state_copy_funcs",
           "state_slot_class"]
