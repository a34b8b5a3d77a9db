"""The dev stack's event publisher: realistic ClaimX task events (and chosen bad records) to Kafka."""
