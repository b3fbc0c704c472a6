"""Multi-seed studies: everything behind `popo compare`, `popo sweep`, `popo report` and `popo demo`.

`runs` defines a study (variants, seeds, one shared rollout budget from one initial checkpoint) and
trains its runs, skipping finished ones and resuming interrupted ones, then records each run's
per-problem outcomes (`outcomes`); `tune` chooses a setting per method on the validation split before
the final comparison on the test split (`popo compare --tune`); `controls` holds the supervised control
arms (`sft-more`, `sft-solved`: supervised training on reference solutions at matched steps); `stats`
holds the statistics (Student-t intervals, paired t-tests, effect sizes from 3 seeds, TOST equivalence,
Holm correction, a problem-level bootstrap, binomial standard errors); `report` turns finished runs into
report.md and its tables, with the figures drawn by `plots` and the per-problem tables by `outcomes`;
`cli` parses and dispatches the study commands; and `demo` is a preset study (one seed of POPO and GRPO
from the warmed-up testbed model) with its own short report. Imports point one way: `cli` and `demo`
use `report`, which reads what `runs` wrote and uses `stats`, `outcomes` and `plots`; `runs` loads
`controls` and `outcomes` only when a run trains; `tune` runs two studies through `runs`; nothing imports
upward.
"""
