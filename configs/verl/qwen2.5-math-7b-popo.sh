#!/usr/bin/env bash
# POPO on Qwen2.5-Math-7B with MATH prompts, inside verl 0.9.1: the verl counterpart of
# configs/qwen2.5-math-7b-popo.yaml (popo's trainer) and configs/trl-qwen2.5-math-7b-popo.yaml (TRL).
#
# NOT RUN HERE: the machines that built it have no 8-GPU node and no model weights; its settings are checked
# against verl 0.9.1's own configuration (tests/test_verl_recipe.py composes them), and POPO's engine is tested
# on CPU processes (tests/test_verl_engine.py). docs/integrations.md, "POPO inside verl", says what differs.
#
# Hardware: one node of 8 x 80 GB GPUs; vLLM rollouts (tensor parallel 2) colocated with FSDP2 training.
# Environment: verl's own (pip install 'verl[vllm]==0.9.1', then pip install --no-deps popo), without TRL:
# verl 0.9.1's model patching imports a TRL class that TRL 1.16 removed. popo registers itself in every Ray
# worker through its `verl.plugins` entry point (VERL_USE_EXTERNAL_PLUGINS=none turns that off).
# Data: verl's parquet layout (chat `prompt`, `data_source`, `reward_model.ground_truth`); verl's math scorer
# rewards the answers (popo's math verifier is not wired into verl's reward manager).
#
#   bash configs/verl/qwen2.5-math-7b-popo.sh [more Hydra overrides]
#
# From a verl GRPO script, the POPO lines are the ones marked `# POPO`; everything else is verl's as usual.
set -euo pipefail
DATA=${DATA:-$HOME/data/math}           # train.parquet, test.parquet (MATH levels 3-5 in the paper's setting)
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}

# BEGIN OVERRIDES (tests/test_verl_recipe.py reads the lines up to END)
OVERRIDES=(
  algorithm.adv_estimator=popo                                                   # POPO: credit from positives
  algorithm.use_kl_in_reward=false
  +algorithm.popo.weight_mode=uniform                                            # POPO: softmax needs old log-probs verl's estimator lacks
  data.train_files=$DATA/train.parquet
  data.val_files=$DATA/test.parquet
  data.train_batch_size=32                                                       # prompts per step
  data.max_prompt_length=1024
  data.max_response_length=1024
  data.filter_overlong_prompts=true
  data.truncation=error
  actor_rollout_ref.model.path=$MODEL
  actor_rollout_ref.model.use_remove_padding=true
  actor_rollout_ref.model.enable_gradient_checkpointing=true
  actor_rollout_ref.actor.strategy=fsdp2                                         # POPO: its engine subclasses FSDP2's
  actor_rollout_ref.actor.fsdp_config._target_=popo.integrations.verl.engine.POPOEngineConfig  # POPO: the engine
  '+actor_rollout_ref.actor.fsdp_config.popo={alpha:0.1,tau:0.999,noise_std:0.01,predictor_width:4096}'  # POPO
  actor_rollout_ref.actor.policy_loss.loss_mode=popo                             # POPO
  actor_rollout_ref.actor.entropy_coeff=0.01                                     # POPO: beta
  actor_rollout_ref.actor.use_kl_loss=false                                      # POPO: no reference model
  actor_rollout_ref.actor.ppo_epochs=1                                           # POPO: one update per batch
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.ppo_mini_batch_size=32
  actor_rollout_ref.actor.use_dynamic_bsz=true
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
  actor_rollout_ref.actor.optim.lr=1e-7
  actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
  actor_rollout_ref.actor.optim.lr_scheduler_type=cosine
  actor_rollout_ref.actor.optim.weight_decay=0.01
  actor_rollout_ref.actor.optim.clip_grad=1.0
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8                                                  # G rollouts per prompt
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.tensor_model_parallel_size=2
  actor_rollout_ref.rollout.gpu_memory_utilization=0.5
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true
  trainer.n_gpus_per_node=8
  trainer.nnodes=1
  trainer.total_training_steps=150
  trainer.save_freq=50
  trainer.test_freq=50
  trainer.val_before_train=true
  trainer.logger='["console","tensorboard"]'
  trainer.project_name=popo
  trainer.experiment_name=qwen2.5-math-7b-popo
)
# END OVERRIDES

python3 -m verl.trainer.main_ppo "${OVERRIDES[@]}" "$@"
