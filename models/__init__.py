"""Detectors, rules and scoring (scikit-learn conventions)."""
