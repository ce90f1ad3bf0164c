"""Job graph: transformations, chaining, partitioning and key groups."""
