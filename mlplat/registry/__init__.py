"""Model registry on MLflow: versions, aliases, promotion gates, rollback and audit."""
