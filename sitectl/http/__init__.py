"""Local HTTP: the installer's dashboard, the JSON API (OpenAPI) and Prometheus metrics."""
