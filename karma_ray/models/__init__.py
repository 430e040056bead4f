"""Loading Hugging Face models and tokenizers by local path or hub id, and building tiny ones for tests.

Heavy imports (transformers) happen inside the functions, so `import karma_ray.models` is cheap.
"""
