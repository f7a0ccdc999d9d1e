"""IPA data plane."""
