"""The worker's model and ports. Standard library only."""
