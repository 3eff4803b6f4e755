"""SupOnly: the dataset settings unchanged (the baseline each method is compared with)."""

SETTINGS = {}
