"""``python -m crdtool`` (also what ``torchrun -m crdtool distill ...`` runs)."""

from crdtool.cli import main

main()
