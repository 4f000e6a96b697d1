"""A reproducible, tracked pipeline for the convolutional image classifiers of the seed notebooks."""
