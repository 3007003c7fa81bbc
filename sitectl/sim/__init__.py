"""A simulated depot: stub CSMS and simulated chargers (tests, benchmarks and the demo)."""
