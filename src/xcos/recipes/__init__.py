"""Recipes: procedures that drive training and evaluation together (above the engine)."""
