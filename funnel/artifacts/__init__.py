"""The artifact format every process shares: versioned directories with a manifest."""
