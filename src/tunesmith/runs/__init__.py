"""Run directories: everything one run produced, in one folder that is never overwritten."""
