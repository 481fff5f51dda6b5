"""The composition root: the `engage` command, the supervisor, the web app, the demo, the
benchmarks and the wiring. It imports every package and holds no logic of its own; nothing
imports it but tests."""
