"""The two ways of running a model: the HF-native path and the vLLM-engine path."""
