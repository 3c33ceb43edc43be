"""Versions of the corpus: row-level diffs, lineage and publishing of what the pipeline built."""
