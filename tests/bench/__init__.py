"""`make bench`: drives Ferrum, `transformers serve --continuous-batching` and static `generate` with the
same seeded workloads, one system after another, and reports their figures side by side."""
