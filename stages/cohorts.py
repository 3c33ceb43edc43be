"""DVC stage `cohorts`: data/warehouse/mimic/ (params cohorts.*) -> data/cohorts/<task>.parquet."""

from _entry import main

from corpus.stages import run_cohorts

if __name__ == "__main__":
    main(run_cohorts)
