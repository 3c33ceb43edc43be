"""DVC stage `baseline`: question splits + cohorts + registry -> metrics/baseline.json (scikit-learn reference)."""

from _entry import main

from corpus.baseline.stage import run_baseline

if __name__ == "__main__":
    main(run_baseline)
