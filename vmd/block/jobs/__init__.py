"""The block jobs: commit, stream, mirror (and active commit), backup, their
filter nodes and their QMP commands. The block-job layer they build on is
``vmd.job.blockjob``."""
