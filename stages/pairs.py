"""DVC stage `pairs@<round>`: samples + kept regenerated rationales -> sft.jsonl, dpo.jsonl, pairs_stats.json."""

import argparse

from _entry import main

from corpus.stages import run_pairs

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args()
    main(lambda: run_pairs(args.round))
