"""DVC stage `train@<round>`: pair files -> models/round-<r>/sft/ and models/round-<r>/<method>/ (params train.*)."""

import argparse

from _entry import main

from corpus.train.stage import run_train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args()
    main(lambda: run_train(args.round))
