"""DVC stages `evaluate_base` (no --round) and `evaluate@<round>`: the test split answered greedily -> metrics."""

import argparse

from _entry import main

from corpus.evaluate import run_evaluate, run_evaluate_base

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, default=None, help="round to evaluate (omit: the base model)")
    args = parser.parse_args()
    main(run_evaluate_base if args.round is None else (lambda: run_evaluate(args.round)))
