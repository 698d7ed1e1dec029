"""Training: YAML recipes → a run folder.

``recipe`` (the validated schema, ``--set`` overrides) names the ``model`` (trainable set, weight-decay
groups), the ``data`` stream and the ``curriculum`` (loop counts); ``objective`` runs a step's passes and
``losses``; ``trainer`` is the accelerate loop, with ``schedule`` (lr), ``parallel`` (DDP or FSDP2,
whole-tensor state), ``checkpoint`` (atomic, resumable) and ``plots`` (the end-of-run PNG).
"""
