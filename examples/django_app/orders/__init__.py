"""The orders app of the Django example."""
