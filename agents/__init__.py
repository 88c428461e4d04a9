"""stable-baselines3 agents trained per target device, and policy application."""
