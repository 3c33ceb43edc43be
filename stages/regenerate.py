"""DVC stage `regenerate@<round>`: hard questions re-sampled with the gold answer as a hint, leaks dropped."""

import argparse

from _entry import main

from corpus.stages import run_regenerate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args()
    main(lambda: run_regenerate(args.round))
