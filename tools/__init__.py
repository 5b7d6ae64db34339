"""Technician and developer tools: card images, the MicroPython runner, flashing, benchmarks."""
