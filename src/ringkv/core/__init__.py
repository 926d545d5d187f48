"""Pure, synchronous domain logic: no I/O, no clocks, no global randomness.

Time enters as ``now_ms`` arguments and randomness as a seeded
``random.Random``; nothing here sleeps, logs or touches the network.
"""
