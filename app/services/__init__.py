"""Business rules: keyword-only functions; every query of tenant-owned rows is filtered by tenant."""
