"""DVC stage `ingest`: MIMIC-IV source (params mimic.*) -> data/warehouse/mimic/ + ingest_report.json."""

from _entry import main

from corpus.stages import run_ingest

if __name__ == "__main__":
    main(run_ingest)
