"""Models: the registry of names (registry) and building, saving and loading networks (network)."""
