"""Training machinery shared by pretraining and fine-tuning, one concern per module.

* :mod:`~components.training.runtime`: processes (DDP), device, precision, seeds.
* :mod:`~components.training.batching`: length-grouped batches and dynamic padding.
* :mod:`~components.training.optimization`: AdamW and the warm-up/decay schedule.
* :mod:`~components.training.checkpoints`: atomic, exact-resume checkpoints.
* :mod:`~components.training.resume`: which run a checkpoint folder belongs to.
* :mod:`~components.training.loop`: the loop itself (``run_loop``).
* :mod:`~components.training.stage`: what both stages share: settings, result.
"""
