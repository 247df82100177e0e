"""Reward sources other than a trained reward model."""
