"""voxgate's pure decision core: pricing, budgets, admission, caps, session configs and the session governor.

Nothing here does I/O, reads a clock or touches asyncio; every time is an explicit `now`.
"""
