"""The embedded testbed: a tiny Qwen2 model, a character tokenizer, a synthetic task and a warm-up.

It lets every command run on a laptop CPU with nothing downloaded: `model.py` builds the model,
`tokenizer.py` the character tokenizer, `addition.py` the addition task (one correct completion per problem),
`countdown.py` the countdown rules, solver and verifier and `countdown_task.py` its splits (many correct
completions per problem; `testbed.task` chooses), and `sft.py` warms the model up (cached under
`testbed.cache_dir`) so that RL starts from a policy that solves some problems."""
