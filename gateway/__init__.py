"""The Sluice gateway: Workers AI and OpenAI HTTP APIs in front of the Redis job queue."""
