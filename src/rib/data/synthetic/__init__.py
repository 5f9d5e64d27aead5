"""The embedded synthetic suite ``rib-mini`` (shapes, styles, corruptions, generation)."""
