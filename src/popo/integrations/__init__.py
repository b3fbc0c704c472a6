"""Bridges from popo's math to other training frameworks.

Nothing is imported here: each integration is a subpackage that imports its framework only when it is
itself imported, so `import popo` never pulls in an optional dependency. Available:

- `popo.integrations.trl`: POPO as a loss type of TRL's `GRPOTrainer` (`pip install 'popo[trl]'`);
  see docs/integrations.md.
"""
