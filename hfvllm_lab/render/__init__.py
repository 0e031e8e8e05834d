"""Render layer: plain text, HTML fragments and matplotlib figures for the result objects.

Nothing here runs a model or measures anything; matplotlib is imported only inside plot functions.
"""
