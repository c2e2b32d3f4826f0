"""Integrations with tools users already run (lm-evaluation-harness). Each module imports its tool lazily: import
``hybridtune.integrations.lm_eval`` only where ``lm-eval`` is installed (``pip install 'hybridtune[eval]'``)."""
