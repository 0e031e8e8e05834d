"""Plain result dataclasses: no I/O, no model; `to_dict()`, `to_frame()`, `_repr_html_()`."""
