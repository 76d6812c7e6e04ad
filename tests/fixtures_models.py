"""Session fixtures that build small real models for tests (filled in with the classifier)."""
