"""Shared model, codec and wire code for edgesplit's edge and cloud tiers."""
