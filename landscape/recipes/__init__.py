"""Recipes: the probes on training loops written the way users write their own.

Run one as ``python -m landscape.recipes.NAME``.
"""
