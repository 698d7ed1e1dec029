"""Evaluation at several loop counts next to the base.

- ``sandbox``: one confined subprocess per generated program; plain data across a pipe.
- ``humaneval``: problems, sandboxed scoring, the unbiased pass@k estimator.
- ``rows``: a row of an evaluation (base, fixed T, adaptive) and how a model runs it.
- ``completions``: batched, resumable HumanEval completions at one loop count.
- ``generate``: one prompt's completions at several loop counts (``mythic generate``).
- ``perplexity``: per-token loss and perplexity on token windows.
- ``pipeline``: the ``mythic eval`` runs (one model load, every row); ``report``: tables, JSON, plots.
- ``lm_eval_adapter``: the ``mythic`` model for lm-evaluation-harness.
"""
