"""Where a step runs: the launcher's environment, the allocation, the launcher, Dask.

- :mod:`.environment`: the one table of launcher variables (SLURM, torchrun), read here only;
- :mod:`.allocation`: the CPUs, memory and GPUs a step was given, and how it shares them out;
- :mod:`.slurm`: the SLURM commands a step runs (scontrol);
- :mod:`.launch`: `hpcpipe launch -n N`, ranks on a laptop and under srun;
- :mod:`.dask`: the Dask modes, one module per backend.
"""
