"""App code that a tenant revision imports."""

DEFAULT_CURRENCY = "EUR"
