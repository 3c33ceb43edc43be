"""Reading source tables (MIMIC-IV, registries) into typed parquet."""
