"""Realtime translation (`/v1/realtime/translations`): proxied and metered by appended audio (docs/translation.md)."""
