"""Change sources: each reads one upstream change log and emits `ChangeBatch`es in source order."""
