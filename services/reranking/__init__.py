"""Re-ranking: an ordered list of policy rules turns ranked candidates into the final list."""
