"""Postgres storage for tenants, keys, policies and the schema: plain SQL over asyncpg, no ORM."""
