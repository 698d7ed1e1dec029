"""``python -m mythic`` runs the CLI."""

from mythic.cli import main

main()
