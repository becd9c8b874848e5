"""The cloud tier: runs the middle (or the rest) of the model for many edge sessions."""
