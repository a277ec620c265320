"""The scenario zoo: small, deterministic, plain-PyTorch training scripts, one per cause in the seeds.

Each module is a script (``python dirty_inputs.py`` trains) and a fixture: ``setup()`` returns
``(model, optimizer, train)``; ``EXPECT`` says what the fault is, from the way the scenario injects it.
No scenario imports nanscope: the tests attach it through the API and through ``nanscope run``.
"""
