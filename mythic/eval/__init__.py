"""Evaluation at several loop counts next to the base.

``rows`` (base, fixed T, adaptive) feed ``humaneval`` (pass@k, scored in the ``sandbox``, completions by
``completions``), ``perplexity``, ``exact_match`` (task files) and ``generate`` (``mythic generate``);
``pipeline`` runs ``mythic eval`` (one model load, every row), ``report`` and ``stats`` make tables, JSON
and plots, and ``lm_eval_adapter`` is the ``mythic`` model for lm-evaluation-harness.
"""
