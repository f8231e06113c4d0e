"""Price data, apart from the arithmetic in `policies.pricing`.

`rates` holds the record types, `table` the lookup a session prices with, `builtin` the
versioned tables voxgate ships, and `sheet` the plain-data form an operator's price file
takes (read from YAML by `gateway.price_file`). A price change edits data, never math.
"""
