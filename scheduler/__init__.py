"""Scheduler process of Ferrum Infer."""
