-- Reads a tenant's spend (reaping expired reservations first). See the budget prelude for KEYS/ARGV.
return reply(load_state(), 1, '')
