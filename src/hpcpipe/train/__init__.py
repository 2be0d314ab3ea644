"""Training of one model for one seed: single process, or one rank per GPU/task with DDP or
FSDP2 sharding (``train.strategy``).

The global batch size, learning rate and sample order depend only on the config and the seed,
never on the number of ranks: every rank draws the same seeded permutation per epoch and
takes its own slice of each global batch; DDP (or FSDP2) averages the gradients. Rank 0 writes
``model.pt`` (the best epoch's weights) and ``history.csv``, both atomically.

With a checkpoint directory, the run checkpoints every ``train.checkpoint_every`` steps and
when SLURM (or anyone) sends SIGUSR1 or SIGTERM, and a rerun resumes from the newest
checkpoint with the same result as an uninterrupted run (bitwise on CPU with deterministic
settings). On SIGUSR1 inside a requeueable SLURM job the job requeues itself and continues.

The modules follow the data flow:

- :mod:`~hpcpipe.train.data`: the feature stores as tensors, the epoch's sample order;
  :mod:`~hpcpipe.train.loader` prepares batches ahead in a thread.
- :mod:`~hpcpipe.train.setup`: torch settings, precision, model, its wrapping and optimizer;
  :mod:`~hpcpipe.train.strategy`: ``train.strategy`` (DDP, or FSDP2 sharding: fsdp, hybrid).
- :mod:`~hpcpipe.train.loop`: the steps of an epoch and the validation loss.
- :mod:`~hpcpipe.train.schedule`: LR schedule and early stopping.
- :mod:`~hpcpipe.train.state`: where a run is and what it has seen; the RNG states.
- :mod:`~hpcpipe.train.checkpoint`: resume checkpoints, and when to write them
  (:mod:`~hpcpipe.train.checkpoint_dcp`: the sharded ones, torch.distributed.checkpoint);
  :mod:`~hpcpipe.train.stop`: stop requests (signals).
- :mod:`~hpcpipe.train.process_group`: the torch.distributed group and its collectives.
- :mod:`~hpcpipe.train.trainer`: :func:`~hpcpipe.train.trainer.train`, the epoch loop.

This package imports nothing itself: ``hpcpipe.train.stop`` must stay free of torch.
"""
