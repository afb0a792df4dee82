"""Detectors trained on stored features: pure numeric cores and thin shells."""
