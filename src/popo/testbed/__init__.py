"""The embedded testbed: a tiny Qwen2 model, a character tokenizer, a synthetic task and a warm-up."""
