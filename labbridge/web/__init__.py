"""The HTTP surface: JSON API, Prometheus /metrics, the dashboard page (no build step)."""
