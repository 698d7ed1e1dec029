"""``mythic export``: a checkpoint as a Hugging Face folder, and its push to the hub.

- ``exporter``  full (self-contained) and light export folders
- ``bundle``    the generated ``modeling_mythic.py``, built from mythic's own model source
- ``card``      the model card (README.md)
- ``push``      the upload to the hub
"""
