"""edgefleet.models: synthetic camera scenes, a SageMaker script-mode training entry point, and
reference architectures for benchmarks. Training needs the `train` extra (torch)."""
