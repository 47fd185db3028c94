"""The asyncio shell: sessions, instrument runners, store, relay, health, daemon."""
