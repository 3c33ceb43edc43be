"""Turning cohorts and registry rows into question records."""
