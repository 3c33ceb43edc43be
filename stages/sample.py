"""DVC stage `sample@<round>`: train questions -> data/rounds/<round>/samples.parquet (params sample.*)."""

import argparse

from _entry import main

from corpus.stages import run_sample

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args()
    main(lambda: run_sample(args.round))
