"""A run: its typed events, the fold that is its state, and its log."""
