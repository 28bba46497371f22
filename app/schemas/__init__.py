"""Request and response schemas, one family per entity (OpenAI shapes plus documented extensions)."""
