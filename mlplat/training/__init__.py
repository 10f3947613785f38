"""Training: compute clusters, training runs (tracked in MLflow, registered through the model registry), tuning
and reproduction. Above the registry and monitoring, whose artifacts, metrics and drift references it uses."""
