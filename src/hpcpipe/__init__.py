"""hpcpipe: a gridded-data ML pipeline that runs the same on a laptop and on SLURM."""

__version__ = "0.1.0"
