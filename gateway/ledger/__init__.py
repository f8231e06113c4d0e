"""The ledger: the writer that makes every billable record durable, and the queries over it."""
