"""Generating rationales and reading the answers out of them."""
