"""Helpers shared by the test tiers (a real Kafka broker, …)."""
