"""Stream processing: pure scoring, ladder and rules, and the worker that applies them."""

from streams.compiled import use_build

COMPILED_FOLD = use_build(__path__)
"""Whether ``streams.scoring`` and ``streams.engagement`` come from the mypyc build."""
