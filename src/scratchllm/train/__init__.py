"""One trainer for every model of the project: loop, evaluation, precision, DDP, checkpoints, logging."""
