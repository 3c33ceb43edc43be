"""DVC stage `questions`: cohorts (+ registry) -> data/questions/{train,val,test}.parquet, validated."""

from _entry import main

from corpus.stages import run_questions

if __name__ == "__main__":
    main(run_questions)
