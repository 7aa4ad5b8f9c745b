"""Gateway process of Ferrum Infer."""
