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


def build_tiny_model(tmp_dir: Path, hidden_size: int = 64, heads: int = 4, kv_heads: int = 2,
                     extra_texts: list[str] | None = None, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the tokenizer, build a seeded random LlamaForCausalLM, save both
    (with a ChatML chat template) under `tmp_dir / "tiny-llama"` and return it.
    The defaults give heads of 16 dimensions; hidden_size=128, heads=2 gives 64
    (SmolLM2's head size, the native decode kernels' one). `extra_texts` and a
    larger `vocab_size` give a tokenizer that writes those texts (e.g. the
    pipeline's own questions) in fewer tokens."""
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
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown tokens
        show_progress=False,
    )
    bpe.train_from_iterator(CLINICAL_SENTENCES * 4 + list(extra_texts or []), trainer=trainer)

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
        max_position_embeddings=4096 if extra_texts else 512,
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


WARM_UP_TAIL = 24


def warm_up_boxed(model_dir: Path, questions: list[dict], out: Path, steps: int = 60,
                  tail: int | None = WARM_UP_TAIL, labels_per_question: int | None = None) -> Path:
    """Teach the random tiny Llama to reply `\\boxed{<label>}`, every option label equally likely.

    An SFT warm-up in miniature: the model learns the answer format and no
    preference between options, so what later training does is measurable
    (samples parse, some right and some wrong: SFT records and DPO pairs
    exist). Only the prompt's last WARM_UP_TAIL tokens are trained on (the
    answer instruction with its option list, then the generation prompt):
    quick on two shared cores, and the tiny model, which attends mostly to
    the last tokens, then answers whole prompts in the format. `tail=None`
    trains on whole prompts (long real ones need it: the model must learn to
    answer past a long history). `labels_per_question` trains only that many
    labels per question (the gold one and the next ones in option order), so
    samples of a question are split between a right and a wrong answer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus.generate.prompts import answer_labels, question_messages, sampling_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    template = sampling_template()
    examples = []
    for question in questions:
        prompt = tokenizer.apply_chat_template(question_messages(question, template), add_generation_prompt=True,
                                               tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-(tail or 0):]
        labels = answer_labels(list(question["options"]))
        if labels_per_question is not None:
            gold = labels[list(question["options"]).index(question["answer"])]
            start = labels.index(gold)
            labels = [labels[(start + i) % len(labels)] for i in range(labels_per_question)]
        for label in labels:
            reply_ids = tokenizer(f"\\boxed{{{label}}}<|im_end|>", add_special_tokens=False)["input_ids"]
            examples.append((prompt_ids + reply_ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), -100)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        attention[row, : len(ids)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def format_questions() -> list[dict]:
    """Question records in the pipeline's four option formats (Yes/No both ways, lettered), for warm-ups."""
    lettered = ["A. less than 3 days (0 to 2 days)", "B. 3 to 6 days", "C. 7 to 13 days", "D. 14 days or more"]
    base = {"context": CLINICAL_SENTENCES[0] + "\n\n" + CLINICAL_SENTENCES[1], "subject_id": 1, "hadm_id": 1}
    return [
        {**base, "id": "w1", "task": "mortality", "question": CLINICAL_SENTENCES[5], "options": ["Yes", "No"], "answer": "No"},
        {**base, "id": "w2", "task": "readmission", "question": CLINICAL_SENTENCES[6], "options": ["No", "Yes"], "answer": "No"},
        {**base, "id": "w3", "task": "los", "question": CLINICAL_SENTENCES[7], "options": lettered, "answer": lettered[1]},
        {**base, "id": "w4", "task": "masked_value", "question": "Hidden value: Potassium. Which range holds it?",
         "options": ["A. below 3.5 mmol/L", "B. 3.5 to 4.2 mmol/L", "C. 4.2 to 5.0 mmol/L", "D. 5.0 mmol/L or above"],
         "answer": "B. 3.5 to 4.2 mmol/L"},
    ]
