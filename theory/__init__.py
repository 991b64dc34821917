"""Seeded experiments that test the paper's claims, each a function returning its data."""
