"""Model registry on MLflow: versions, aliases, promotion gates, rollback and audit; the MLflow connection,
metrics and splits, and the artifacts a training run records, which training, serving and jobs use."""
