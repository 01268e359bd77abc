"""Copy generation with causal language models (SmolLM2-135M by default, any local HF model).

The generator room arrives with its own issue; this package is importable so the rest of
copyloop can depend on the name.
"""
