"""Model-kernel shortcuts: faster ways to compute the same thing.

* :mod:`components.kernels.cpu_speedups`: cheaper CPU dropout masks and a sparse
  word-embedding gradient inside the training step.
* :mod:`components.kernels.first_position`: the last encoder layer computed at the
  [CLS] position only, for heads that read nothing else.

Neither imports anything else from Ratchet, so the Bento ships ``first_position`` alone.
"""
