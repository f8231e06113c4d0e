"""Realtime translation (`/v1/realtime/translations`, `gpt-realtime-translate`)."""
