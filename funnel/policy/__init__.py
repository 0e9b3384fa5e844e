"""Content policy shared by re-ranking and the gateway, so safety never depends on one process."""
