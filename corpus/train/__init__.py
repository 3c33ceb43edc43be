"""Training: TRL SFT, DPO and GRPO from the pipeline's pair files."""
