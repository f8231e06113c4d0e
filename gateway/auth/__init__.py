"""Who is calling: tenant API keys, browser tokens, JWT verification and JWKS fetching."""
