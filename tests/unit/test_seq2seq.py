"""Summarization / translation adapter: the loss mask, truncation, baselines, decoding."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from lm_tasks.config import TokenizerConfig
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.tasks.seq2seq import IGNORE, Seq2SeqAdapter
from lm_tasks.tokenizer import train_tokenizer

TEXTS = ["the fox sees the dog.", "ka lomi miren tudan.", "a report about the harbour. in the end it rained."] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = TokenizerConfig(name="bpe", kind="bpe", vocab_size=300, min_frequency=1, eos_token="<|endoftext|>",
                          pad_token="<|pad|>", unk_token="<|unk|>", sep_token="<|sep|>", extra_special_tokens=[])
    return train_tokenizer(Dataset.from_dict({"text": TEXTS}), cfg, tmp_path_factory.mktemp("t") / "tokenizer.json")


def adapter(tokenizer, task="translation", max_length=64) -> Seq2SeqAdapter:
    return Seq2SeqAdapter(task, max_length, sep_id=3, eos_id=0, pad_id=1, num_beams=1, max_new_tokens=8,
                          tokenizer=tokenizer)


def test_loss_mask_covers_only_target_tokens(tokenizer):
    ds = Dataset.from_dict({"source": ["the fox sees the dog."], "target": ["ka lomi miren."]})
    encoded, truncated = adapter(tokenizer).encode(ds, tokenizer)
    source = tokenizer.encode("the fox sees the dog.", add_special_tokens=False).ids
    target = tokenizer.encode("ka lomi miren.", add_special_tokens=False).ids
    row = encoded[0]
    assert truncated == 0
    assert row["input_ids"] == source + [3] + target  # source <sep> target (eos only as a label)
    assert row["labels"] == [IGNORE] * len(source) + target + [0]
    # Each scored position predicts the next token of source <sep> target <eos>.
    sequence = source + [3] + target + [0]
    for i, label in enumerate(row["labels"]):
        if label != IGNORE:
            assert label == sequence[i + 1] and i >= len(source)
    assert row["prompt_ids"] == source + [3]


def test_long_sources_are_cut_to_fit_and_counted(tokenizer):
    ds = Dataset.from_dict({"source": ["the fox sees the dog. " * 20], "target": ["ka lomi."]})
    encoded, truncated = adapter(tokenizer, max_length=24).encode(ds, tokenizer)
    assert truncated == 1
    assert len(encoded[0]["input_ids"]) + 1 <= 24


def test_collate_pads_inputs_and_ignores_padded_labels(tokenizer):
    a = adapter(tokenizer)
    batch = a.collate([{"input_ids": [5, 3, 7], "labels": [IGNORE, 7, 0], "prompt_ids": [5, 3], "reference": "x"},
                       {"input_ids": [5, 6, 3, 7, 8], "labels": [IGNORE, IGNORE, 7, 8, 0],
                        "prompt_ids": [5, 6, 3], "reference": "y"}])
    assert batch["idx"].tolist() == [[5, 3, 7, 1, 1], [5, 6, 3, 7, 8]]
    assert batch["labels"].tolist() == [[IGNORE, 7, 0, IGNORE, IGNORE], [IGNORE, IGNORE, 7, 8, 0]]


def test_baselines(tokenizer):
    validation = Dataset.from_dict({"source": ["First sentence here. The key finding is this."],
                                    "target": ["First sentence here."]})
    lead = adapter(tokenizer, "summarization").baseline(validation, validation)
    assert lead["rouge1"] == pytest.approx(1.0)
    copy = adapter(tokenizer, "translation").baseline(
        validation, Dataset.from_dict({"source": ["the fox sees the dog."], "target": ["the fox sees the dog."]}))
    assert copy["bleu"] == pytest.approx(100.0)


def test_predict_decodes_new_tokens_only(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=16,
                          eos_id=0, pad_id=1)).eval()
    a = adapter(tokenizer)
    prompt = tokenizer.encode("the fox", add_special_tokens=False).ids + [3]
    [prediction] = a.predict(model, None, {"idx": torch.zeros(1, 1, dtype=torch.long), "prompts": [prompt]})
    expected = model.generate(torch.tensor([prompt]), 8, temperature=0, eos_id=0)[0, len(prompt):].tolist()
    assert prediction["text"] == tokenizer.decode([t for t in expected if t not in (0, 1)]).strip()


def test_extractive_summary_is_the_source_sentence_the_model_learned_to_continue_with(tokenizer):
    """finetune.summarization.extractive: a model trained to answer "source <sep>" with the
    sentence about the harbour picks that sentence, wherever it stands in the source."""
    a = Seq2SeqAdapter("summarization", 64, sep_id=3, eos_id=0, pad_id=1, num_beams=1, max_new_tokens=8,
                       tokenizer=tokenizer, extractive=True)
    sentences = ["the fox sees the dog.", "a report about the harbour.", "in the end it rained."]
    sources = [" ".join(sentences[i:] + sentences[:i]) for i in range(3)]  # the harbour first, second, last
    train = Dataset.from_dict({"source": sources, "target": ["a report about the harbour."] * 3})
    encoded, _ = a.encode(train, tokenizer)
    assert encoded[0]["source"] == sources[0]  # extractive rows keep their source text
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=32,
                          eos_id=0, pad_id=1))
    untrained = [a.extract(model.eval(), source) for source in sources]
    assert untrained == [a.extract(model, source, chunk=1) for source in sources]  # chunking changes nothing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = a.collate(list(encoded))
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        a.loss(model, None, batch).backward()
        optimizer.step()
    model.eval()
    predictions = a.predict(model, None, batch)
    assert [p["text"] for p in predictions] == ["a report about the harbour."] * 3
    assert a.describe()["extractive"] is True


def test_only_summarization_decodes_extractively():
    from lm_tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="only summarization has it"):
        load_config(["finetune=translation", "finetune.translation.extractive=true"])
