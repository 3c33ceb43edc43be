"""DVC stage `registry`: sepsis challenge files (params registry.*) -> data/warehouse/registry.parquet."""

from _entry import main

from corpus.stages import run_registry

if __name__ == "__main__":
    main(run_registry)
