"""karma_ray: learn Reddit karma as a reward and align language models with it on Ray.

Importing this package is cheap on purpose: it must not import ray, deepspeed or vllm
(tests and the CLI's config validation run without them).
"""

__version__ = "0.1.0"
