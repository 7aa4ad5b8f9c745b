"""Worker process of Ferrum Infer."""
