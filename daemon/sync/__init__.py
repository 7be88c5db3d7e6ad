"""The sync engine: snapshots of both sides, a pure reconcile, and a safe apply."""
