"""Where results go: one mechanism for the files an output path stands for, tensor writers, saving a model."""
