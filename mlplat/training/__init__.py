"""Training: compute clusters, training runs with tracking, tuning and reproduction."""
