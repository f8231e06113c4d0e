"""The ledger: its record types and SQL, the journal on local disk, the batching writer, reports."""
