"""The supervised SAE: model core, encoder and value-head registries, losses, export."""
