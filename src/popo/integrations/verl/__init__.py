"""POPO as a verl plugin (docs/integrations.md, "POPO inside verl").

Nothing here imports verl when this package is imported. `plugin.register()` does (verl runs it in every
process through the ``verl.plugins`` entry point, `autoload`), and enters into verl's registries

- the advantage estimator ``"popo"`` (`advantage.popo_advantage`): POPO's per-row credit from verl's
  token-level rewards and group ids (``algorithm.adv_estimator=popo``);
- the policy loss ``"popo"`` (`loss.popo_policy_loss`): the name ``actor_rollout_ref.actor.policy_loss.loss_mode=popo``
  selects; POPO's engine computes the loss itself, and verl's own engine calling it is refused (it would train
  POPO without its similarity term), with the engine setting to use;
- the actor engine (`engine.POPOFSDPEngine`, switched on by ``fsdp_config._target_=...POPOEngineConfig``):
  forwards only the positives, holds the EMA target sharded like the policy and the predictor, adds the
  similarity term, keeps ranks in lockstep, and checkpoints them with verl's files (`rows`: its batch layout;
  `internals`: the private verl names it uses, checked at registration).
"""
