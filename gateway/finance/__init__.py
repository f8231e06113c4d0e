"""Finance: the OpenAI-shaped Costs API over the ledger's UTC 15-minute rollups (docs/finance.md)."""
