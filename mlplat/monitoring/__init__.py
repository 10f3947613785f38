"""Monitoring: how far what a model sees in production has drifted from what it was trained on."""
