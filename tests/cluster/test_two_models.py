"""Two workers serving two models whose tokenizers are not `tokenizer.json`: both are listed, each
gets only its own traffic, and the served text equals transformers' own.

The models are tiny random ones, each built here with a tokenizer of another kind: a Llama with only
a SentencePiece `tokenizer.model` (Llama 2 and Mistral era checkpoints; transformers needs the
sentencepiece package to read it) and a chat template, and a GPT-2 with only GPT-2's `vocab.json`
and `merges.txt` and no chat template.

The SentencePiece model has no byte fallback: a random model's byte tokens often form invalid UTF-8,
and transformers decodes a run of byte tokens as one, so a later byte can turn an earlier valid one
into U+FFFD in its decode of the whole output; a stream cannot take back text it has sent (vLLM's
detokenizer streams the same way).
"""

from __future__ import annotations

import inspect
import json
import string

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import scrape

pytestmark = pytest.mark.cluster

VOCAB = 400
PROMPT = "The worker replaces only the attention function, so other models work"
CHAT = [{"role": "user", "content": "Which models does the worker serve?"}]
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def corpus(directory) -> str:
    path = directory / "corpus.txt"
    path.write_text(inspect.getsource(string) + inspect.getsource(json.decoder))
    return str(path)


def save_random_model(config, directory) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def sentencepiece_llama(directory) -> None:
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        input=corpus(directory), model_prefix=str(directory / "tokenizer"), vocab_size=VOCAB, model_type="bpe",
        byte_fallback=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (directory / "tokenizer.vocab").unlink()
    (directory / "corpus.txt").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "chat_template": TEMPLATE}))
    save_random_model(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                  bos_token_id=1, eos_token_id=2), directory)


def byte_level_gpt2(directory) -> None:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train([corpus(directory)], vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save_model(str(directory))  # vocab.json and merges.txt only
    (directory / "corpus.txt").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}))
    save_random_model(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2,
                                 bos_token_id=0, eos_token_id=0), directory)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    built = {}
    for name, build in [("sp-llama", sentencepiece_llama), ("gpt2-bpe", byte_level_gpt2)]:
        directory = tmp_path_factory.mktemp(name)
        build(directory)
        built[name] = str(directory)
    return built


@pytest.fixture(scope="module")
def cluster(models):
    specs = [WorkerSpec(path, name, WORKER_ENV) for name, path in models.items()]
    with LocalCluster(specs, redis=False) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=cluster.base_url, api_key="x", max_retries=0, timeout=60)


def requests_served(cluster) -> list[float]:
    return [sum(value for key, value in scrape(cluster.metrics_url(worker)).items()
                if key.startswith("ferrum_infer_worker_requests_total")) for worker in cluster.workers]


def test_each_model_is_listed_and_served_by_its_own_worker(cluster, client):
    assert sorted(model.id for model in client.models.list().data) == ["gpt2-bpe", "sp-llama"]
    before = requests_served(cluster)
    for _ in range(2):
        client.completions.create(model="sp-llama", prompt="Hello", max_tokens=2)
    client.completions.create(model="gpt2-bpe", prompt="Hello", max_tokens=2)
    after = requests_served(cluster)
    assert [a - b for a, b in zip(after, before)] == [2, 1]  # workers in the order of `models`


def reference(model_dir: str, prompt_ids: list[int], max_new_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                             attention_mask=torch.ones_like(ids))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["sp-llama", "gpt2-bpe"])
def test_completion_text_and_token_counts_equal_transformers(client, models, name):
    prompt_ids = AutoTokenizer.from_pretrained(models[name])(PROMPT).input_ids
    request = dict(model=name, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**request)
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(**request, stream=True)
                       if chunk.choices)
    assert whole.choices[0].text == reference(models[name], prompt_ids, 24)
    assert streamed == whole.choices[0].text
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt_ids), 24)


def test_chat_uses_the_template_of_the_sentencepiece_model(client, models):
    prompt_ids = AutoTokenizer.from_pretrained(models["sp-llama"]).apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    reply = client.chat.completions.create(model="sp-llama", messages=CHAT, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == reference(models["sp-llama"], prompt_ids, 12)
    assert reply.usage.prompt_tokens == len(prompt_ids)


def test_chat_with_a_model_that_has_no_template_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt2-bpe", messages=CHAT, max_tokens=4)
    assert "has no chat template" in refused.value.message
