"""Observe a running model (memory, timing, attention, hidden states) and return plain data."""
