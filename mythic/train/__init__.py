"""Training: YAML recipes → a run folder.

- ``recipe``      the validated recipe schema (pydantic v2), ``--set`` overrides, one-line errors
- ``curriculum``  loop-count samplers (fixed, stage tables, Poisson-lognormal, per sequence)
- ``losses``      loss terms on plain logits (CE, focal, margin, KL, model aux terms)
- ``objective``   the model passes of one step + the loss recipe as one module (true base for the KL anchor)
- ``data``        sources, mixture, packing with EOS, chat prompt masking, resumable position
- ``model``       building the recipe's model, the trainable set, weight-decay groups
- ``schedule``    the learning-rate schedule
- ``parallel``    DDP or FSDP2 shards over the ranks; whole-tensor state for checkpoints
- ``checkpoint``  atomic, resumable training checkpoints
- ``plots``       the end-of-run PNG
- ``trainer``     the accelerate training loop
"""
