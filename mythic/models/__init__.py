"""Models: the retrofit wrapper around a pretrained base, and the from-scratch OpenMythos RDT."""
