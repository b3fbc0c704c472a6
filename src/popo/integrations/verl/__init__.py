"""POPO as a verl plugin (foundations; issue 26).

Nothing here imports verl when this package is imported: `popo.integrations.verl.plugin.register()` does,
and enters into verl's registries

- the advantage estimator ``"popo"`` (`advantage.popo_advantage`): POPO's per-row credit from verl's
  token-level rewards and group ids (``algorithm.adv_estimator=popo``);
- the policy loss ``"popo"`` (`loss.popo_policy_loss`): POPO's weighted NLL on verl's tensor layout
  (``actor_rollout_ref.actor.policy_loss.loss_mode=popo``).

What is not here yet (an actor-engine subclass): forwarding only the positives, the EMA target and the
predictor of the similarity term, their checkpoints, and multi-process runs. See docs/integrations.md.
"""
