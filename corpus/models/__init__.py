"""Preparing the models the pipeline samples from and trains."""
