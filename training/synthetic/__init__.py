"""Data the project makes: seeded synthetic street scenes (scenes.py) and datasets built from them
(datasets.py), for the quickstart, the detector's fine-tuning, the demo, the benchmarks and the tests."""
