"""JupyterHub for mlplat: spawner profiles (CPU/GPU), local and Kubernetes configuration, hub services."""
