"""Checks of rendered prompts against the policy's tokenizer, for `popo.data.prepare.fit_prompts`: the most
characters a prompt of a given token budget can hold (`max_prompt_chars`, so an absurdly long prompt is refused
before it is tokenized) and the characters a tokenizer cannot represent (`unrepresentable`).

Representing: a tokenizer either maps a character it does not know to its unknown token (the testbed's
character tokenizer as built in memory) or drops it silently (the same tokenizer loaded with `AutoTokenizer`
from a saved folder is a byte-level BPE with no unknown token). Both show as a prompt whose tokens, decoded,
are not the prompt; the characters at fault are then found one by one.
"""

from __future__ import annotations

__all__ = ["known_characters", "max_prompt_chars", "max_token_chars", "unrepresentable"]


def max_token_chars(tokenizer) -> int:
    """The longest entry of the tokenizer's vocabulary (added tokens included), in characters: no token covers
    more characters of text (a byte-level vocabulary spells each byte as one character, and a character is at
    least one byte), so a text of n characters is at least n / this many tokens."""
    return max(1, max(map(len, tokenizer.get_vocab()), default=1))


def max_prompt_chars(tokenizer, limit: int) -> int:
    """The most characters a prompt of at most `limit` tokens can hold: `limit` x `max_token_chars`. A longer
    prompt is over the limit without tokenizing it, unless the tokenizer's normalizer shortens text (collapses
    runs of spaces, as some SentencePiece models do): such a prompt is refused all the same."""
    return limit * max_token_chars(tokenizer)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _unknown_id(tokenizer) -> int | None:
    """The id of the tokenizer's unknown token: the one of its `tokenizers` model (the testbed's character
    tokenizer sets only that one), else the wrapper's; None when it has none."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    name = getattr(model, "unk_token", None)
    if isinstance(name, str) and name:
        return tokenizer.convert_tokens_to_ids(name)
    return None if model is not None else getattr(tokenizer, "unk_token_id", None)


def _lost(tokenizer, ch: str, unknown: int | None) -> bool:
    """Whether the tokenizer loses `ch`: its tokens (of `ch` twice, so a leading-space rule that strips one
    space does not count) are the unknown token, or decode to text holding neither `ch` nor what the
    tokenizer's normalizer makes of it (NFKC's "fi" for "ﬁ" is not a loss)."""
    ids = tokenizer(ch * 2, add_special_tokens=False)["input_ids"]
    if unknown is not None and unknown in ids:
        return True
    text = _decode(tokenizer, ids)
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return ch not in text and (normalizer is None or normalizer.normalize_str(ch) not in text)


def unrepresentable(tokenizer, prompts: list[str], ids: list[list[int]]) -> dict[int, str]:
    """{prompt index: the characters the tokenizer loses from it, quoted} for the prompts whose token `ids` do
    not decode back to the prompt and hold characters it loses (`_lost`) outside its added tokens (a chat
    template's `<|im_start|>` is one token, whatever its characters). A prompt that does not round-trip only
    because the tokenizer normalises it (Unicode forms, spaces) loses no character and is not listed."""
    unknown = _unknown_id(tokenizer)
    added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)  # `<|im_start|>` is one token, whole
    verdict: dict[str, bool] = {}  # character -> the tokenizer loses it
    out = {}
    for i, (prompt, row) in enumerate(zip(prompts, ids)):
        if (unknown is None or unknown not in row) and _decode(tokenizer, row) == prompt:
            continue
        for token in added:
            prompt = prompt.replace(token, "")
        for ch in set(prompt) - set(verdict):
            verdict[ch] = _lost(tokenizer, ch, unknown)
        chars = sorted(ch for ch in set(prompt) if verdict[ch])
        if chars:
            out[i] = ", ".join(repr(ch) for ch in chars)
        elif unknown is not None and unknown in row:
            out[i] = "(some sequence of characters)"
    return out


def known_characters(tokenizer) -> str:
    """'; it knows only ...' for a small character-level vocabulary (the testbed's): its one-character tokens
    that it does not lose (`_lost`), else ''."""
    vocab = tokenizer.get_vocab()
    chars = [t for t in vocab if len(t) == 1]
    if len(vocab) > 300 or len(chars) < len(vocab) - len(tokenizer.all_special_tokens) - 1:
        return ""
    unknown = _unknown_id(tokenizer)
    kept = "".join(sorted(ch for ch in chars if not _lost(tokenizer, ch, unknown)))
    return f"; this tokenizer knows only the characters {kept!r} (the testbed model's own)"
