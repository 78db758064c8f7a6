"""An example SaaS application: accounts in ``public``, one schema per account."""
