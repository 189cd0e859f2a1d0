"""A policy small enough to learn by GRPO inside a test, through the real training loop.

A random 2-layer model over a byte-level BPE vocabulary of a few thousand tokens trained on the
world's own texts (its pages, and the prompts, turns and observations of the oracle's
demonstrations), with the turn tags as single tokens and the Qwen2.5 chat template. The small
vocabulary is what makes it cheap: over Qwen's 151k tokens the output layer costs more than the
rest of the model, and a warm start that puts a tiny policy on the turn format takes tens of
minutes instead of three.
"""

import asyncio
import html
import re
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.models.tokenizer import QWEN2_5_CHAT_TEMPLATE, qwen2_tokenizer
from dr_jax.runtime import start_world_tools
from dr_jax.train.config import TrainConfig
from dr_jax.train.run import world_questions
from dr_jax.train.sft import solve_questions
from dr_jax.world import World

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>",
        "<tool_response>", "</tool_response>"]  # fmt: skip
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MARKUP = re.compile(r"<[^>]+>")


def world_texts(world: World, config: TrainConfig) -> list[str]:
    """The pages' text, and every text of the oracle's demonstrations of the run's train
    questions, rendered as the run renders them (prompt, turns, observations)."""
    texts = [_MARKUP.sub(" ", html.unescape(page)) for page in world.pages.values()]
    questions = world_questions(world, "train", config.data.data_sources or None)

    async def solve():
        async with start_world_tools(config.tools, world) as tools:
            url, trust = tools.config.search_url, config.sft.trust_snippets
            return await solve_questions(questions, tools, url, config.max_turns,
                                         trust_snippets=trust)  # fmt: skip

    demos = asyncio.run(solve())
    qwen, template = qwen2_tokenizer(), config.prompt.template()
    for demo in demos:
        texts.append(qwen.decode(template.prompt_ids(qwen, demo.question.question, today=None)))
        texts += [text for turn in demo.turns for text in turn if text]
    return texts


def world_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` (deterministic), the turn tags as single tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens(TAGS)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=QWEN2_5_CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)  # fmt: skip


def small_policy_dir(out: Path, texts: list[str], vocab_size: int = 4096, seed: int = 0) -> Path:
    """An HF directory (config, weights, tokenizer) of a random 2-layer policy over a BPE
    vocabulary of at most `vocab_size` tokens trained on `texts`."""
    tokenizer = world_tokenizer(texts, vocab_size)
    config = ModelConfig.tiny(vocab_size=len(tokenizer), bos_token_id=None,
                              eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    save_pretrained(init_policy(config, seed=seed), out)
    tokenizer.save_pretrained(str(out))
    return out
