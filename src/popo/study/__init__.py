"""Multi-seed studies: everything behind `popo compare`, `popo sweep`, `popo report` and `popo demo`.
`runs` defines a study (variants, seeds, one shared rollout budget from one initial checkpoint) and
trains its runs, skipping finished ones and resuming interrupted ones; `controls` holds the non-RL
control arm (`sft-more`: supervised training on reference solutions at matched steps); `stats` holds
the statistics over seeds (Student-t intervals, paired t-tests, effect sizes, binomial standard
errors); `report` turns finished runs into report.md and its tables, with the figures drawn by `plots`;
`cli` parses and dispatches the study commands; and `demo` is a preset study (one seed of POPO and
GRPO from the warmed-up testbed model) reported through the same `report` module. Imports point one
way: `cli` and `demo` use `report`, which reads what `runs` wrote and uses `stats` and `plots`;
`runs` loads `controls` only when an `sft-more` run trains; nothing imports upward.
"""
