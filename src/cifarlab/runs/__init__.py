"""Run folders: where each file of a run lives, and reading and writing them."""
