"""Postgres storage for tenants, keys, policies, the audit log and the schema: plain SQL over asyncpg."""
