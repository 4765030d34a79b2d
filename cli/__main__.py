"""``python -m cli ...`` and ``torchrun --nproc_per_node N -m cli train``: the `ratchet` CLI."""

from cli.main import main

main()
