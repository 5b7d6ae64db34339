"""The virtual card: simulators of the world around the real firmware (the A7670 modem over a
pty, GNSS, the energy model), scenarios and the runner."""
