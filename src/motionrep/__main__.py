"""``python -m motionrep ...`` (also what ``torchrun -m motionrep`` runs)."""

from motionrep.cli import main

main()
