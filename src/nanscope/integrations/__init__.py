"""Thin adapters over the engine for the frameworks people train with (each imports its framework lazily):

- :mod:`nanscope.integrations.lightning`: ``NanscopeCallback`` for ``lightning.pytorch`` / ``pytorch_lightning``;
- :mod:`nanscope.integrations.transformers`: ``NanscopeCallback`` for the HF ``Trainer``.

Both watch through the same events as ``nanscope run`` (module hooks, the optimizer step, backward, the
DataLoader), keep nanscope's recovery state in the framework's checkpoints, and under ``nanscope run`` reuse
its watcher instead of attaching a second one.
"""
