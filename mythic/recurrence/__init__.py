"""The recurrence core: one module per mechanism, shared by the retrofit wrapper and OpenMythos.

- ``injection``  LTI re-injection of the prelude output, ρ(Ā) < 1 by construction
- ``gates``      identity-biased gate and per-loop LayerScale
- ``depth_lora`` per-loop low-rank deltas on Linear layers inside the looped block
- ``loop_embedding`` optional sinusoidal loop-index embedding
- ``rules``      update rules (residual, parcae, concat) built from the above
- ``halting``    ACT halting (per-position weights that sum to 1, ponder cost)
- ``loop``       THE loop driver: runs a block T times for every path (cached/uncached, train/eval)
- ``cache``      per-(loop, layer) KV slots on top of transformers' DynamicCache
"""

RULES = ("residual", "parcae", "concat")
