"""`python -m dalle` (and `torchrun ... -m dalle train-vae ...`) runs the command line."""

from dalle.cli import main

main()
