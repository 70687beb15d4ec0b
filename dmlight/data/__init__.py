"""Data sets as one preprocessed tensor per split: `datasets` (MNIST, the embedded digits, Fashion-MNIST,
synthetic blobs, a user's own by `_target_`). Empty on purpose: importing a subpackage loads nothing else."""
