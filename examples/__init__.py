"""Example applications ragloop evaluates (README: Evaluating your own app); not part of the package."""
