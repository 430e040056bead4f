"""PPO on Ray: workers (plain classes), weight sync, placement, and the driver loop."""
