"""IPA control plane."""
