"""remedi-corpus: versioned dataset builder for clinical-reasoning corpora."""

__version__ = "0.1.0"
