"""DVC stage `base_model`: params base_model.source -> models/base/ (a local Hugging Face folder)."""

from _entry import main

from corpus.stages import run_base_model

if __name__ == "__main__":
    main(run_base_model)
