"""The Sluice worker: takes jobs from Redis (arq), runs them on an engine, streams events back."""
