"""A character-level tokenizer for the testbed, built locally with `tokenizers`.

Every printable character the synthetic task uses is one token, plus `<pad>`, `<eos>` and `<bos>`. It is
wrapped as a `transformers.PreTrainedTokenizerFast`, so it saves and loads with `save_pretrained` /
`from_pretrained` like any hub tokenizer, and it carries a chat template that renders the last user
message as is (the testbed prompts are plain text).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>")
CHARACTERS = "0123456789+-*=,.:;()?# abcdefghijklmnopqrstuvwxyz"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
    "{% endif %}{% endfor %}"
)


def build_tokenizer(characters: str = CHARACTERS) -> PreTrainedTokenizerFast:
    """Build the testbed tokenizer: ids 0..2 are pad, eos, bos, then one id per character."""
    if len(set(characters)) != len(characters):
        raise ValueError("characters must be unique")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in characters:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        padding_side="left",
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
