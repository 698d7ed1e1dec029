"""mythic: retrofit recurrent depth into pretrained language models.

A middle block of a pretrained decoder is run T times (``n_loops``) with stable
re-injection of its input; ``n_loops=1`` is the base model bit for bit.
"""

__version__ = "0.1.0"
