"""The recurrence core: one module per mechanism, shared by the retrofit wrapper and OpenMythos.

Each module's docstring states its formula or contract; the map of the modules is README's "How it works".
"""

RULES = ("residual", "parcae", "concat", "token")
