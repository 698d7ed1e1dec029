"""Evaluation at several loop counts next to the base.

- ``sandbox``: one confined subprocess per generated program; plain data across a pipe.
- ``humaneval``: problems, sandboxed scoring, the unbiased pass@k estimator.
- ``generation``: batched, resumable completions at one loop count.
- ``perplexity``: per-token loss and perplexity on token windows.
- ``pipeline``: the ``mythic eval`` runs (one model load, every row); ``report``: tables, JSON, plots.
- ``lm_eval_adapter``: the ``mythic`` model for lm-evaluation-harness.
"""
