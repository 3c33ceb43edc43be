"""A tiny random Llama with a tiny byte-level BPE tokenizer, saved as a local
Hugging Face folder: a stand-in generator / trainable model for tests (no
download, about 100 K parameters, built in a few seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

# ChatML, as SmolLM2-Instruct and Qwen use: generation prompts end with
# "<|im_start|>assistant\n".
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512

# Training text for the tokenizer: the words the tests' prompts and answers use.
CLINICAL_SENTENCES = [
    "Patient EHR context (visits in order; the last one is the current visit):",
    "Visit 0: Conditions: 1. Sepsis 2. Acute kidney failure 3. Congestive heart failure",
    "Procedures: 1. Hemodialysis 2. Insertion of endotracheal tube",
    "Medications: 1. Heparin 2. Furosemide 3. Vancomycin 4. Insulin",
    "Visit 1: Conditions: 1. Pneumonia (new) 2. Chronic kidney disease (continued from previous visit)",
    "Based on the patient's visits above, will the patient die in hospital during their next admission?",
    "Will the patient be admitted to hospital again within 15 days? Answer Yes or No.",
    "How long will the current hospital stay last? Choose one option.",
    "Options: A. less than 3 days (0 to 2 days) B. 3 to 6 days C. 7 to 13 days D. 14 days or more",
    "The patient has worsening renal function and hypotension, so the risk of death is high.",
    "Heart rate below 72.0 bpm, lactate rising, blood pressure falling despite fluids.",
    "Therefore the answer is Yes. The final answer is No. Answer: \\boxed{B}",
    "The patient is stable, vitals are normal and the stay will likely be short.",
]


def build_tiny_model(tmp_dir: Path, hidden_size: int = 64, heads: int = 4, kv_heads: int = 2) -> Path:
    """Train the tokenizer, build a seeded random LlamaForCausalLM, save both
    (with a ChatML chat template) under `tmp_dir / "tiny-llama"` and return it.
    The defaults give heads of 16 dimensions; hidden_size=128, heads=2 gives 64
    (SmolLM2's head size, the native decode kernels' one)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(tmp_dir) / "tiny-llama"
    folder.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown tokens
        show_progress=False,
    )
    bpe.train_from_iterator(CLINICAL_SENTENCES * 4, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
