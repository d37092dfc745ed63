"""Packaged Hydra config tree of edit-run (the repository's top-level conf/)."""
